# -*- test-case-name: tests.unit.test_metrics -*-
"""
L{ScrapeAdmission}: the scrapers' connections, within the descriptor
budget but not the connection limit, so that a scrape is answered while
the proxied connections hold every descriptor they may.

The budget keeps L{KEPT_SCRAPES} connections' worth of descriptors (and
what collecting needs) aside for scrapers; one more scraper takes its
descriptor from what the connections could use, while there is any. The
metrics listeners accept through the proxy's own
L{socketproxyd.stream.acceptor.Acceptor}: when not even that is left, or
the process is out of descriptors, scrapers wait in the backlog until one
closes or a back-off has passed, rather than being accepted only to be
closed as Twisted's own ports would. A scraper must send a whole
request within L{REQUEST_SECONDS} of its first byte (L{BoundedScrape}).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import cast

from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime, ITCPTransport
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Site

from socketproxyd.events import cancelled
from socketproxyd.fdbudget import FdBudget
from socketproxyd.reactors import ProxyReactor
from socketproxyd.stream.acceptor import Acceptor

KEPT_SCRAPES = 4
"""
How many scrapers' connections the budget keeps descriptors for.
"""

COLLECTING_FDS = 2
"""
The descriptors a scrape opens for a moment: the listing of
C{/proc/self/fd} for C{process_open_fds}, and the duplicate
C{adoptStreamConnection} makes of an accepted socket.
"""

ACCEPTS_PER_WAKEUP = 16

REQUEST_SECONDS = 10.0
"""
How long a scraper may take from the first byte of a request to its
answer. Twisted's HTTP idle timeout starts again at every byte, so one
that sends a byte a second would keep its place for hours, and while the
connections hold every descriptor, the kept places are all scrapers have.
"""


class BoundedScrape(TimeoutMixin, ProtocolWrapper):
    """
    A scraper's connection, aborted when a request is not whole (nothing
    has been answered) within L{REQUEST_SECONDS} of its first byte: one
    timeout of Twisted's C{TimeoutMixin}, on the factory's clock, set by
    the first byte after an answer and not restarted by the next ones.
    Bytes of a next request that came with the end of the last one, and
    then nothing, are the HTTP channel's idle timeout's to end (60 s, then
    15 s to abort), as is a connection idle between requests.
    """

    factory: ScrapeAdmission

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        return self.factory.clock.callLater(period, func)

    def dataReceived(self, data: bytes) -> None:
        if self.timeOut is None:
            self.setTimeout(REQUEST_SECONDS)
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self.setTimeout(None)
        super().write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.setTimeout(None)
        super().writeSequence(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        cast(ITCPTransport, self.transport).abortConnection()


class ScrapeAdmission(WrappingFactory, ServerFactory):
    """
    Wraps the metrics' site, to count its open connections against the
    descriptors kept for them (see the module docstring); the
    L{socketproxyd.events.Admission} of the metrics' acceptors.

    @ivar acceptors: the acceptors of the metrics listeners.
    @ivar scrapers: how many scrapers' connections are open.
    """

    protocol = BoundedScrape
    noisy = False
    backoff = 1.0

    def __init__(self, reactor: ProxyReactor, site: Site, budget: FdBudget) -> None:
        super().__init__(site)
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.budget = budget
        budget.keep(KEPT_SCRAPES + COLLECTING_FDS)
        self.acceptors: list[Acceptor] = []
        self.scrapers = 0
        self._paused = False
        self._retry: IDelayedCall | None = None

    def logPrefix(self) -> str:
        return "metrics"

    def room(self) -> int:
        """
        How many more scrapers may be accepted now.
        """
        kept = max(0, KEPT_SCRAPES - self.scrapers)
        return int(min(ACCEPTS_PER_WAKEUP, kept + max(0, self.budget.free)))

    def accepted(self, sock: socket.socket, address: object) -> None:
        """
        A scraper accepted by an acceptor: serve it on a Twisted transport.
        """
        try:
            self.reactor.adoptStreamConnection(sock.fileno(), sock.family, self)
        finally:
            sock.close()

    def registerProtocol(self, p: IProtocol) -> None:
        super().registerProtocol(p)
        self.scrapers += 1
        if self.scrapers > KEPT_SCRAPES:
            self.budget.take(1)
        self.budget.keptOpen = min(self.scrapers, KEPT_SCRAPES)

    def unregisterProtocol(self, p: IProtocol) -> None:
        super().unregisterProtocol(p)
        self.scrapers -= 1
        self.budget.keptOpen = min(self.scrapers, KEPT_SCRAPES)
        if self.scrapers >= KEPT_SCRAPES:
            self.budget.give(1)
        self._resume()

    def fdsExhausted(self) -> None:
        """
        No room for another scraper: leave them in the backlog until one
        closes, or a back-off has passed.
        """
        if not self._paused:
            self._paused = True
            for acceptor in self.acceptors:
                acceptor.stopReading()
        if self._retry is None:
            self._retry = self.clock.callLater(self.backoff, self._resume)

    def _resume(self) -> None:
        cancelled(self._retry)
        self._retry = None
        if self._paused:
            self._paused = False
            for acceptor in self.acceptors:
                acceptor.startReading()

    def close(self) -> None:
        """
        Stop accepting scrapers for good: the listeners are closing.
        """
        cancelled(self._retry)
        self._retry = None
        acceptors, self.acceptors = self.acceptors, []
        for acceptor in acceptors:
            acceptor.stopReading()
