# -*- test-case-name: tests.unit.test_service -*-
"""
L{DrainService}: C{--drain-timeout}, a consumer of the proxy's events.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from socketproxyd.config.timespan import formatTimespan
from socketproxyd.events import Served, cancelled
from socketproxyd.logs import observer
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.listenerset import ListenerSet


class DrainService(Service):
    """
    On stop, ends the datagram sessions (nothing of theirs is in flight),
    lets the open connections finish for up to C{drainTimeout}, then
    closes the rest (at once when it is 0, as the original does, or when
    hurried).
    """

    log = Logger(observer=observer)

    def __init__(
        self, reactor: IReactorTime, ledger: Ledger, listeners: ListenerSet, drainTimeout: float
    ) -> None:
        self.reactor = reactor
        self.ledger = ledger
        self.listeners = listeners
        self.drainTimeout = drainTimeout
        self._drained: Deferred[None] | None = None

    def opened(self, served: Served) -> None:
        pass

    def closed(self, served: Served) -> None:
        """
        The last connection closed: the drain is over.
        """
        if not self.ledger.open and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def hurry(self) -> None:
        """
        A second SIGTERM or SIGINT while stopping: end what the drain is
        still waiting for, at once (streams with a reset).
        """
        count = self.ledger.count()
        if count:
            self.log.info("Stopping now: closing {count} connections", count=count)
            self.ledger.shutdownAll()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.listeners.endSessions()
        count = self.ledger.count()
        if not count:
            return None
        self._drained = drained = Deferred[None]()
        self.ledger.follow(self, opens=False)
        if self.drainTimeout > 0:
            self.log.info(
                "Stopping: waiting up to {span} for {count} connections",
                span=formatTimespan(self.drainTimeout),
                count=count,
            )
            deadline = self.reactor.callLater(self.drainTimeout, self.ledger.shutdownAll)
            drained.addBoth(lambda result: cancelled(deadline))
        else:
            self.ledger.shutdownAll()
        return drained
