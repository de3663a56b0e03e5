# -*- test-case-name: tests.unit.test_service -*-
"""
L{StatusService}: sd_notify's READY, STATUS, the watchdog and STOPPING; a
consumer of the proxy's events for STATUS.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall

from socketproxyd.events import Served, cancelled
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.listenerset import ListenerSet
from socketproxyd.systemd.notify import Notifier


class StatusService(Service):
    """
    Tells the service manager the proxy is ready, how many connections are
    open (at most every C{statusInterval}), that it is alive (the
    watchdog) and that it is stopping.
    """

    statusInterval = 0.5

    def __init__(
        self,
        reactor: ProxyReactor,
        notifier: Notifier,
        ledger: Ledger,
        limit: ConnectionLimit,
        listeners: ListenerSet,
    ) -> None:
        self.reactor = reactor
        self.notifier = notifier
        self.ledger = ledger
        self.limit = limit
        self.listeners = listeners
        self._call: IDelayedCall | None = None

    def status(self) -> str:
        """
        The STATUS= text: how many are open, of how many, and per listener
        name where the listeners have more than one.
        """
        ledger = self.ledger
        count = ledger.count()
        noun = "connection" if count == 1 else "connections"
        status = f"{count} {noun} open (at most {self.limit.capacity}"
        if sessions := ledger.sessions():
            status += f"; streams {count - sessions}, datagram sessions {sessions}"
        status += ")"
        routes = self.listeners.routeNames()
        if len(routes) > 1:
            counts = ledger.countsByRoute()
            status += ": " + ", ".join(f"{route} {counts[route]}" for route in routes)
        return status

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        """
        READY=1 once the reactor runs, when clients are accepted and
        Twisted has opened its own descriptors.
        """
        if self.running:
            self.notifier.ready(self.status())
            self.notifier.startWatchdog()

    def opened(self, served: Served) -> None:
        self._soon()

    def closed(self, served: Served) -> None:
        self._soon()

    def _soon(self) -> None:
        """
        Send the new count soon, with whatever else changes meanwhile.
        """
        if self._call is None and self.running:
            self._call = self.reactor.callLater(self.statusInterval, self._send)

    def _send(self) -> None:
        self._call = None
        self.notifier.status(self.status())

    def stopService(self) -> None:
        super().stopService()
        cancelled(self._call)
        self._call = None
        self.notifier.stopping()
        self.notifier.stopWatchdog()
