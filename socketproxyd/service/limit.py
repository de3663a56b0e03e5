# -*- test-case-name: tests.unit.test_service -*-
"""
L{ConnectionLimit}: C{--connections-max} and the descriptor budget.

The listeners accept only while one more connection fits under
C{--connections-max} and in what the descriptors under RLIMIT_NOFILE hold;
otherwise clients wait in the kernel's backlog. Running out of descriptors
(an accept, a connect or a pipe failing with EMFILE/ENFILE) stops accepting
too, said once per episode, until a connection closes or a back-off has
passed; connections whose connect failed for want of one wait meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from socketproxyd.events import Served, cancelled
from socketproxyd.fdbudget import FDS_PER_CONNECTION, FdBudget, openDescriptors
from socketproxyd.logs import observer
from socketproxyd.notices import Notice


class Switch(Protocol):
    """
    What the limit turns on and off: accepting on every listener.
    """

    def accept(self, accepting: bool) -> None: ...


class ConnectionLimit(Service):
    """
    The limit (see the module docstring): the first consumer of every
    event, and what the data paths ask for room.

    @ivar capacity: how many connections are served at once.
    @ivar count: how many are open now.
    @ivar switch: the listeners it makes accept or not, once they exist.
    @ivar timesFull: how many times the limit was reached and accepting
        stopped.
    @ivar exhaustions: how many times accepting stopped for want of
        descriptors.
    """

    log = Logger(observer=observer)
    limitLogInterval = 60.0
    exhaustionBackoff = 1.0

    def __init__(self, reactor: IReactorTime, connectionsMax: int = 256) -> None:
        self.reactor = reactor
        self.connectionsMax = connectionsMax
        self.capacity = connectionsMax
        self.count = 0
        self.switch: Switch | None = None
        self.budget = FdBudget()
        self.budget.onReleased = self._released
        self.limitsDescriptors = False
        self.timesFull = 0
        self.exhaustions = 0
        self._accepting = False
        self._exhausted = False
        self._limitNotice = Notice(reactor, self.limitLogInterval)
        self._exhaustionNotice = Notice(reactor, self.limitLogInterval)
        self._waiting: list[Callable[[], None]] = []
        self._backoffCall: IDelayedCall | None = None

    def sizeToDescriptors(self, softLimit: int) -> None:
        """
        Count the descriptors the soft RLIMIT_NOFILE leaves once the
        listeners are open, and serve no more connections than they hold.
        """
        self.limitsDescriptors = True
        self.budget.count(softLimit, openDescriptors())
        fits = int(min(self.budget.connections(), self.connectionsMax))
        if fits < self.connectionsMax:
            self.capacity = fits
            self.log.warn(
                "RLIMIT_NOFILE={limit} holds {fits} connections, not {wanted}: "
                "serving at most {fits} at once (raise LimitNOFILE= for more)",
                limit=softLimit,
                fits=fits,
                wanted=self.connectionsMax,
            )

    def startService(self) -> None:
        super().startService()
        self._updateAccepting()

    def room(self) -> int:
        """
        How many more clients may be accepted now: free connection slots,
        as far as the descriptors under the soft RLIMIT_NOFILE in force
        now hold them.
        """
        self.budget.refresh()
        return int(min(self.capacity - self.count, self.budget.connections()))

    def _updateAccepting(self) -> None:
        full = self.count >= self.capacity
        if self.running and not full and not self._exhausted and self.budget.connections() < 1:
            self.fdsExhausted()
            return
        accepting = bool(self.running) and not self._exhausted and not full
        if accepting == self._accepting:
            return
        self._accepting = accepting
        if self.switch is not None:
            self.switch.accept(accepting)
        if full and self.running:
            self.timesFull += 1
            if hits := self._limitNotice.begins():
                self.log.info(
                    "Connection limit {limit} reached{again}; new clients wait in the backlog",
                    limit=self.capacity,
                    hits=hits,
                    again=f" {hits} times since the last report" if hits > 1 else "",
                )

    def _released(self) -> None:
        """
        Descriptors were given back: accept again if that was what stopped
        it (while accepting, freeing cannot change anything).
        """
        if not self._accepting:
            self._updateAccepting()

    def opened(self, served: Served) -> None:
        """
        Count a new connection; at the limit, stop accepting.
        """
        self.count += 1
        budget = self.budget
        budget.take(FDS_PER_CONNECTION)
        if self.count >= self.capacity or budget.free < FDS_PER_CONNECTION:
            self._updateAccepting()

    def closed(self, served: Served) -> None:
        """
        Free a connection's slot; giving its fds back to the budget
        re-evaluates accepting.
        """
        self.count -= 1
        self.budget.give(FDS_PER_CONNECTION)
        if self._exhausted or self._waiting:
            self._lookAgain()

    def fdsExhausted(self) -> None:
        """
        The process or the system is out of file descriptors (an accept or
        a connect failed for want of one, or the soft limit in force leaves
        no room): stop accepting, so new clients wait in the backlog, and
        look again when a connection closes or after a back-off. The fd
        budget is counted afresh, since something it did not know of took
        descriptors. Said once per episode, and at most once a minute.
        """
        if self.count >= self.capacity:
            self._updateAccepting()
            return
        if self.limitsDescriptors:
            self.budget.recount(openDescriptors())
        if not self._exhausted:
            self._exhausted = True
            self.exhaustions += 1
            if self._exhaustionNotice.begins():
                self.log.warn(
                    "Out of file descriptors with {count} connections open (soft "
                    "RLIMIT_NOFILE={limit}): new clients wait in the backlog",
                    count=self.count,
                    limit=self.budget.readLimit(),
                )
            self._updateAccepting()
        self._lookAgainLater()

    def waitForDescriptors(self, again: Callable[[], None]) -> None:
        """
        A connection could not connect for want of descriptors: its client
        waits, and C{again} tries once more when descriptors are free.
        """
        self._waiting.append(again)
        self._lookAgainLater()

    def _lookAgainLater(self) -> None:
        if self._backoffCall is None and self.running:
            self._backoffCall = self.reactor.callLater(self.exhaustionBackoff, self._lookAgain)

    def _cancelBackoff(self) -> None:
        cancelled(self._backoffCall)
        self._backoffCall = None

    def _lookAgain(self) -> None:
        """
        Connect the connections that wait for descriptors, and accept again,
        if descriptors seem to be free; else wait once more.
        """
        self._cancelBackoff()
        if not (self._exhausted or self._waiting):
            return
        self.budget.refresh()
        if self.budget.free < 1:
            self.fdsExhausted()
            self._lookAgainLater()
            return
        self._exhausted = False
        waiting, self._waiting = self._waiting, []
        for again in waiting:
            again()
        if self._exhausted:
            return
        self._updateAccepting()
        if not self._exhausted and self._exhaustionNotice.ends():
            self.log.info("File descriptors available again; accepting")

    def stopService(self) -> None:
        """
        Stop accepting; open connections go on.
        """
        super().stopService()
        self._cancelBackoff()
        self._updateAccepting()
