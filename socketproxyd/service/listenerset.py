# -*- test-case-name: tests.integration.test_routes_listeners -*-
"""
L{ListenerSet}: the proxy's listeners, each routed to the factory (or the
relay) of its name, opened, and accepting through an L{Acceptor} where the
port allows, whenever the limit says so.

The datagram modules are imported only for a datagram listener: a
stream-only proxy's first client waits for nothing it does not use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from socketproxyd.addresses import describeAddress
from socketproxyd.config.routes import UNNAMED, RouteError, Routes
from socketproxyd.config.settings import ProxySettings
from socketproxyd.events import Ending, Tracker
from socketproxyd.logs import observer
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.opening import (
    DatagramListener,
    Listener,
    StartupError,
    openListeners,
    planListeners,
)
from socketproxyd.stream.acceptor import Acceptor, adoptable
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.systemd.activation import HOW_TO_PASS, InheritedSocket

if TYPE_CHECKING:
    from socketproxyd.datagram.port import DatagramPort
    from socketproxyd.datagram.relay import DatagramRelay
    from socketproxyd.stream.earlyrelay import EarlyPair


class Readable(Protocol):
    """
    What accepts clients on a listener: an L{Acceptor}, or a Twisted port
    that reads for itself.
    """

    def startReading(self) -> None: ...

    def stopReading(self) -> None: ...


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
        self.acceptors: list[Readable] = []

    def factoryFor(self, name: str | None, label: str) -> ProxyFactory:
        """
        The one factory of the stream listeners called C{name}, on the
        target their route gives.
        """
        self.names.add(name)
        if name in self.factories:
            return self.factories[name]
        target = self.routes.targetFor(name, label)
        route = name if name != UNNAMED else None
        factory = ProxyFactory(
            self.reactor, target, self.settings, self.tracker, self.sweeper, route=route
        )
        self.factories[name] = factory
        return factory

    def relayFor(self, name: str | None, label: str) -> DatagramRelay:
        """
        A relay of its own for a datagram listener called C{name} (replies
        leave by the socket the client wrote to), on the target its route
        gives.
        """
        self.names.add(name)
        target = self.routes.targetFor(name, label)
        route = name if name != UNNAMED else None
        if self.settings.proxyProtocol == "v1":
            raise RouteError(f"{label}: a datagram listener takes --proxy-protocol=v2, not v1")
        if self.settings.acceptsHeaderOn(route):
            raise RouteError(
                f"{label}: a datagram listener does not take --accept-proxy-protocol "
                "(name the stream listeners that do: --accept-proxy-protocol=NAME)"
            )
        from socketproxyd.datagram.relay import DatagramRelay

        try:
            relay = DatagramRelay(self.reactor, target, self.settings, self.tracker, route)
        except ValueError as e:
            raise RouteError(f"{label}: the target cannot take datagrams ({e})") from None
        self.relays.append(relay)
        return relay

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
            plan = planListeners(self.reactor, inherited, descriptions, self)
            self.routes.checkUsed(self.names)
            unknown = sorted(self.settings.acceptProxyProtocol - {""} - self.names)
            if unknown:
                raise RouteError(
                    f"--accept-proxy-protocol={unknown[0]}: no listener is named {unknown[0]!r}"
                )
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
        self.ports.append(listener.port)
        if isinstance(listener, DatagramListener):
            listener.port.startReading()
        elif adoptable(listener.port, listener.factory):
            accepted = listener.factory.accepted
            self.acceptors.append(Acceptor(self.reactor, listener.port, self.tracker, accepted))
        elif hasattr(listener.port, "stopReading"):
            # A Twisted port that reads for itself (TLS): a FileDescriptor.
            port = cast(Readable, listener.port)
            port.stopReading()
            self.acceptors.append(port)
        self.log.info(
            "Listening on {address} ({label}) for {target}",
            address=describeAddress(listener.port.getHost()),
            label=listener.label,
            target=str(listener.factory.target),
        )

    def adopt(self, pairs: Sequence[EarlyPair]) -> None:
        """
        Serve the clients the early relay served while Twisted loaded, each
        by the factory of the listener it came by.
        """
        for pair in pairs:
            self.factories[pair.name].adopt(pair)

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
