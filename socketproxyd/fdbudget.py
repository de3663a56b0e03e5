# -*- test-case-name: tests.unit.test_fdlimit -*-
"""
The file-descriptor budget: how many connections fit under RLIMIT_NOFILE,
so the proxy stops accepting before it runs out instead of spinning on
EMFILE as the original does.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable

FDS_PER_CONNECTION = 2
FDS_PER_PIPE_PAIR = 4
RESERVE = 4
"""
Descriptors kept free for what else the process opens: resolver threads,
the notify socket, log files.
"""
PIPE_HEADROOM = 8


def raiseSoftLimit() -> int:
    """
    Raise the soft RLIMIT_NOFILE to the hard limit, as a server that may hold
    thousands of sockets should; return the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def softLimit() -> float:
    """
    The soft RLIMIT_NOFILE in force now; C{math.inf} for none.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return math.inf if soft == resource.RLIM_INFINITY else soft


def openDescriptors() -> int:
    """
    How many fds this process has open now.
    """
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return RESERVE


class FdBudget:
    """
    The fds still free under RLIMIT_NOFILE for connections (two each) and
    splice pipe pairs (four each). Connections come first: a pipe pair is
    only opened while room for L{PIPE_HEADROOM} more connections remains,
    and a connection that cannot have pipes relays through its transports.

    @ivar free: fds not spoken for; C{math.inf} without a limit.
    @ivar reserve: fds never counted free: L{RESERVE}, and what L{keep}
        sets aside.
    @ivar keptOpen: how many of the fds L{keep} set aside are open now
        (which L{recount}'s count of open fds includes).
    @ivar onReleased: called after fds are given back.
    """

    def __init__(self, free: float = math.inf, limit: float = math.inf) -> None:
        self.free = free
        self.limit = limit
        self.reserve = RESERVE
        self.keptOpen = 0
        self.onReleased: Callable[[], None] = lambda: None
        self.readLimit: Callable[[], float] = softLimit

    @classmethod
    def forLimit(cls, softLimit: int, inUse: int) -> FdBudget:
        """
        The budget of a process with C{inUse} fds open under C{softLimit},
        keeping L{RESERVE} spare.
        """
        budget = cls()
        budget.count(softLimit, inUse)
        return budget

    def count(self, softLimit: int, inUse: int) -> None:
        """
        Hold what C{softLimit} leaves with C{inUse} fds open, less the
        reserve.
        """
        if softLimit != resource.RLIM_INFINITY:
            self.limit = softLimit
            self.free = softLimit - inUse - self.reserve

    def keep(self, count: int) -> None:
        """
        Set C{count} more fds aside for something other than connections
        and pipes (the metrics' scrapes), for as long as the process runs.
        """
        self.reserve += count
        self.free -= count

    def refresh(self, limit: float | None = None) -> None:
        """
        Follow the soft RLIMIT_NOFILE in force now (C{prlimit} can change
        it from outside the process), or C{limit} when given.
        """
        if math.isinf(self.limit):
            return
        if limit is None:
            limit = self.readLimit()
        self.free += limit - self.limit
        self.limit = limit

    def recount(self, inUse: int) -> None:
        """
        Set what is free from the descriptors counted open now, which may
        be more than the budget knew of.
        """
        if not math.isinf(self.limit):
            self.free = self.limit - inUse - (self.reserve - self.keptOpen)

    def connections(self) -> float:
        """
        How many more connections fit.
        """
        if math.isinf(self.free):
            return math.inf
        return max(0, self.free // FDS_PER_CONNECTION)

    def takePipes(self) -> bool:
        """
        Reserve a pipe pair's fds if that leaves room for connections.
        """
        if self.free < FDS_PER_PIPE_PAIR + PIPE_HEADROOM * FDS_PER_CONNECTION:
            return False
        self.free -= FDS_PER_PIPE_PAIR
        return True

    def take(self, count: int) -> None:
        """
        C{count} fds are now in use.
        """
        self.free -= count

    def give(self, count: int) -> None:
        """
        C{count} fds were closed.
        """
        self.free += count
        self.onReleased()
