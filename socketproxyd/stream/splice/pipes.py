# -*- test-case-name: tests.unit.test_splice_pipes -*-
"""
Pipes for the splice pump: how one is made, and when a connection may have
them. Pipes exist only while bulk data flows: a L{PipeSweeper} hands out
pipe pairs within the descriptor budget and closes those of connections
that moved nothing for a sweep interval.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from socketproxyd.config.settings import PIPE_SIZE
from socketproxyd.fdbudget import FDS_PER_PIPE_PAIR, FdBudget

if TYPE_CHECKING:
    from socketproxyd.stream.splice.pump import SplicePump


def available() -> bool:
    """
    Whether this platform has splice(2) (Linux, Python 3.10+).
    """
    return hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")


class Pipe:
    """
    A non-blocking pipe pair sized for bulk transfers: as large as the
    system allows up to C{size} (C{F_SETPIPE_SZ} is capped by
    C{fs.pipe-max-size} and shrinks once the user's pipe memory is used
    up), the size it got read back.
    """

    __slots__ = ("read", "write", "size")

    def __init__(self, size: int = PIPE_SIZE) -> None:
        self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            pass
        self.size = fcntl.fcntl(self.write, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


class PipeSweeper:
    """
    Decides when a connection may open a pipe pair (taking its fds from the
    fd budget), and closes the pipes of connections that moved nothing for
    one interval.

    @ivar outOfFds: called when a pipe could not be opened for want of fds.
    @ivar pipeSize: the size of pipe to ask for (C{--pipe-size}).
    """

    interval = 1.0

    def __init__(
        self,
        clock: IReactorTime,
        budget: FdBudget | None = None,
        outOfFds: Callable[[], None] = lambda: None,
        pipeSize: int = PIPE_SIZE,
    ) -> None:
        self.clock = clock
        self.pipeSize = pipeSize
        self.budget = budget if budget is not None else FdBudget()
        self.outOfFds = outOfFds
        self.holders: set[SplicePump] = set()
        self._smallPipesUntil = 0.0
        self._loop: LoopingCall | None = None

    def acquire(self, pump: SplicePump) -> bool:
        """
        Whether C{pump} may open its pipes now; if so, their fds are taken
        from the budget and given back by L{released}. Not while the fd
        budget has no room, nor for an interval after the kernel gave pipes
        too small to be worth splicing through (see L{tooSmall}).
        """
        if self.clock.seconds() < self._smallPipesUntil or not self.budget.takePipes():
            return False
        self.holders.add(pump)
        if self._loop is None:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)
        return True

    def tooSmall(self) -> None:
        """
        The pipes just opened were smaller than the copy buffer, as the
        kernel makes them once the user's pipe memory is used up
        (C{fs.pipe-user-pages-soft}, for services without
        C{CAP_SYS_RESOURCE}): open none for one interval.
        """
        self._smallPipesUntil = self.clock.seconds() + self.interval

    def released(self, pump: SplicePump) -> None:
        """
        C{pump} closed its pipes.
        """
        if pump in self.holders:
            self.holders.discard(pump)
            self.budget.give(FDS_PER_PIPE_PAIR)

    def sweep(self) -> None:
        """
        Close the pipes of every connection that was not active since the
        last sweep and has nothing in flight; stop when no pipe is left.
        """
        for pump in list(self.holders):
            if pump.active:
                pump.active = False
            elif not pump.inFlight():
                pump.releasePipes()
        if not self.holders and self._loop is not None:
            self._loop.stop()
            self._loop = None
