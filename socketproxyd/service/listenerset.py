# -*- test-case-name: tests.test_routes -*-
"""
L{ListenerSet}: the proxy's listeners, each routed to the factory (or the
relay) of its name, opened, and accepting through an L{Acceptor} where the
port allows, whenever the limit says so.

The datagram modules are imported only for a datagram listener: a
stream-only proxy's first client waits for nothing it does not use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from socketproxyd.addresses import describeAddress
from socketproxyd.config.routes import UNNAMED, RouteError, Routes
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.events import Ending, Tracker
from socketproxyd.logs import observer
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.opening import Listener, StartupError, openListeners, planListeners
from socketproxyd.stream.acceptor import Acceptor, adoptable
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.systemd.activation import HOW_TO_PASS, InheritedSocket

if TYPE_CHECKING:
    from socketproxyd.datagram.port import DatagramPort
    from socketproxyd.datagram.relay import DatagramRelay


class ListenerSet:
    """
    The proxy's listeners: each routed to the factory of its name, opened,
    and accepting through an L{Acceptor} (where the port allows) whenever
    the limit allows.

    @ivar factories: the factory of the stream listeners of each name.
    @ivar relays: the relay of each datagram listener.
    @ivar names: the names of all listeners.
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: ProxyReactor,
        routes: Routes,
        settings: ProxySettings,
        tracker: Tracker,
        sweeper: PipeSweeper,
    ) -> None:
        self.reactor = reactor
        self.routes = routes
        self.settings = settings
        self.tracker = tracker
        self.sweeper = sweeper
        self.factories: dict[str | None, ProxyFactory] = {}
        self.relays: list[DatagramRelay] = []
        self.names: set[str | None] = set()
        self.ports: list[IListeningPort | DatagramPort] = []
        self.acceptors: list[Acceptor | IListeningPort] = []

    def factoryFor(
        self, name: str | None, label: str, datagram: bool = False
    ) -> ProxyFactory | DatagramRelay:
        """
        The one factory of the stream listeners called C{name} (or a relay
        of its own for each datagram listener: replies leave by the socket
        the client wrote to), on the target their route gives.
        """
        self.names.add(name)
        if not datagram and name in self.factories:
            return self.factories[name]
        target = self.routes.targetFor(name, label)
        route = name if name != UNNAMED else None
        if datagram:
            relay = self._relay(target, label, route)
            self.relays.append(relay)
            return relay
        factory = ProxyFactory(
            self.reactor, target, self.settings, self.tracker, self.sweeper, route=route
        )
        self.factories[name] = factory
        return factory

    def _relay(self, target: Target, label: str, route: str | None) -> DatagramRelay:
        if self.settings.proxyProtocol == "v1":
            raise RouteError(f"{label}: a datagram listener takes --proxy-protocol=v2, not v1")
        from socketproxyd.datagram.relay import DatagramRelay

        try:
            return DatagramRelay(self.reactor, target, self.settings, self.tracker, route)
        except ValueError as e:
            raise RouteError(f"{label}: the target cannot take datagrams ({e})") from None

    def routeNames(self) -> list[str]:
        """
        The names of the routes in use, sorted.
        """
        routed = [*self.factories.values(), *self.relays]
        return sorted({f.route for f in routed if f.route is not None})

    def endSessions(self) -> None:
        """
        End every datagram session: they have nothing in flight to drain.
        """
        for relay in self.relays:
            relay.endAll(Ending.SHUTDOWN)

    def open(self, inherited: Sequence[InheritedSocket], descriptions: Sequence[str]) -> None:
        """
        Route, then open, the inherited sockets and C{descriptions}.

        @raise StartupError: when one cannot be routed or opened, or there
            is none; nothing is left open.
        """
        try:
            plan = planListeners(self.reactor, inherited, descriptions, self.factoryFor)
            self.routes.checkUsed(self.names)
        except RouteError as e:
            raise StartupError(str(e)) from None
        for listener in openListeners(plan):
            self.add(listener)
        if not self.ports:
            raise StartupError(f"no listening socket: {HOW_TO_PASS}")

    def add(self, listener: Listener) -> None:
        """
        Serve an open listener: accept on it through an L{Acceptor} where
        the port allows, once told to accept.
        """
        port, factory = listener.port, listener.factory
        self.ports.append(port)
        if factory in self.relays:
            port.startReading()
        elif adoptable(port, factory):
            self.acceptors.append(Acceptor(self.reactor, port, self.tracker, factory.accepted))
        elif hasattr(port, "stopReading"):
            port.stopReading()
            self.acceptors.append(port)
        self.log.info(
            "Listening on {address} ({label}) for {target}",
            address=describeAddress(port.getHost()),
            label=listener.label,
            target=str(factory.target),
        )

    def accept(self, accepting: bool) -> None:
        """
        Accept clients on every listener, or leave them in the backlogs.
        """
        for acceptor in self.acceptors:
            if accepting:
                acceptor.startReading()
            else:
                acceptor.stopReading()

    def close(self) -> Deferred:
        """
        Stop accepting and close every listener.
        """
        self.accept(False)
        ports, self.ports, self.acceptors = self.ports, [], []
        return DeferredList([d for d in (p.stopListening() for p in ports) if d])
