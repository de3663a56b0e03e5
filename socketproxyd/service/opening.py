# -*- test-case-name: tests.integration.test_routes_listeners -*-
"""
Opening the listeners: the inherited sockets, then every C{--listen}
endpoint, each with its name and on the factory of its route (all routed
before any is opened); and the one-line exit when that cannot be done.

The datagram modules are imported only for a datagram listener: a
stream-only proxy's first client waits for nothing it does not use.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NoReturn

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from socketproxyd.addresses import describeAddress
from socketproxyd.config.routes import UNNAMED, RouteError, Routes, splitListen
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.events import Ending
from socketproxyd.logs import observer
from socketproxyd.stream.acceptor import Acceptor, adoptable
from socketproxyd.stream.factory import ConnectionTracker, ProxyFactory
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.systemd.activation import (
    HOW_TO_PASS,
    ActivationError,
    InheritedSocket,
    adopt,
    takeDatagramSocket,
)

if TYPE_CHECKING:
    from socketproxyd.datagram.relay import DatagramPort, DatagramRelay


class StartupError(Exception):
    """
    The proxy cannot start; the message says why and what to do.
    """


def exitAtStartup(reason: str) -> NoReturn:
    """
    Exit 1 with one line on the process's own stderr: under twistd the
    runner has put its log in C{sys.stderr}'s place by the time services
    start, and a start-up error is for the operator starting it.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"socketproxyd: {reason}\n")
    stream.flush()
    raise SystemExit(1)


@dataclass(frozen=True)
class Listener:
    """
    One open listener: its port, how log lines call it, its name (if it
    has one) and the factory of its route.
    """

    port: IListeningPort | DatagramPort
    label: str
    name: str | None
    factory: ProxyFactory | DatagramRelay


FactoryFor = Callable[[str | None, str, bool], "ProxyFactory | DatagramRelay"]
"""
Gives the factory (or, for datagram listeners, the relay) for the
listeners of a name, given a label to name the listener in an error
(L{RouteError} when no route serves it).
"""


@dataclass(frozen=True)
class PlannedListener:
    """
    A listener to open: how log lines call it, its name, the factory of
    its route, and what opens it.
    """

    label: str
    name: str | None
    factory: ProxyFactory | DatagramRelay
    opener: Callable[[], IListeningPort | DatagramPort]

    def open(self) -> Listener:
        return Listener(self.opener(), self.label, self.name, self.factory)


def planListeners(
    reactor: object,
    inherited: Sequence[InheritedSocket],
    descriptions: Sequence[str],
    factoryFor: FactoryFor,
) -> list[PlannedListener]:
    """
    Route every inherited socket and C{[NAME=]ENDPOINT} of C{descriptions}
    before anything is opened, so a routing error opens nothing.

    @raise RouteError: naming the listener no route serves, or a bad name.
    """
    plan = []
    for sock in inherited:
        label = sock.describe()
        factory = factoryFor(sock.name, label, sock.datagram)
        if sock.datagram:
            opener = partial(_adoptDatagram, sock, factory)
        else:
            opener = partial(adopt, reactor, sock, factory)
        plan.append(PlannedListener(label, sock.name, factory, opener))
    for text in descriptions:
        name, description = splitListen(text)
        datagram = description.startswith("udp:")
        factory = factoryFor(name, f"--listen={text}", datagram)
        if datagram:
            opener = partial(_listenUDP, description, factory)
        else:
            opener = partial(_listen, reactor, description, factory)
        plan.append(PlannedListener(text, name, factory, opener))
    return plan


def _adoptDatagram(inherited: InheritedSocket, relay: DatagramRelay) -> DatagramPort:
    return relay.listenOn(takeDatagramSocket(inherited))


def _listenUDP(description: str, relay: DatagramRelay) -> DatagramPort:
    """
    Bind C{udp:PORT[:interface=ADDRESS]} (all IPv4 addresses by default).
    """
    kind, _, rest = description.partition(":")
    port, _, option = rest.partition(":")
    key, _, interface = option.partition("=")
    if not port.isdigit() or int(port) > 65535 or (option and key != "interface"):
        raise StartupError(
            f"--listen={description}: not a datagram endpoint; "
            f"use udp:PORT or udp:PORT:interface=ADDRESS"
        )
    interface = interface or "0.0.0.0"
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError as e:
        raise StartupError(f"--listen={description}: cannot listen: {e.strerror}") from None
    try:
        sock.bind((interface, int(port)))
    except OSError as e:
        sock.close()
        raise StartupError(f"--listen={description}: cannot listen: {e.strerror}") from None
    return relay.listenOn(sock)


def openListeners(plan: Sequence[PlannedListener]) -> list[Listener]:
    """
    Open every planned listener.

    @raise StartupError: saying which listener cannot be opened, once what
        was opened is closed again.
    """
    opened: list[Listener] = []
    try:
        for planned in plan:
            opened.append(planned.open())
    except (ActivationError, StartupError) as e:
        for listener in opened:
            listener.port.stopListening()
        raise StartupError(str(e)) from None
    return opened


def _listen(reactor: object, description: str, factory: ProxyFactory) -> IListeningPort:
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        kind = description.split(":", 1)[0]
        why = f" (unknown type {kind!r})" if "Unknown endpoint type" in str(e) else ""
        raise StartupError(
            f"--listen={description}: not a server endpoint{why}; "
            f"use e.g. tcp:8080:interface=127.0.0.1, unix:/run/app.sock or udp:53"
        ) from None
    outcome: list[object] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise StartupError(f"--listen={description}: did not bind at once")
    if isinstance(outcome[0], Failure):
        reason = outcome[0].getErrorMessage()
        raise StartupError(f"--listen={description}: cannot listen: {reason}")
    return outcome[0]


class Listeners:
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
        reactor: object,
        routes: Routes,
        settings: ProxySettings,
        tracker: ConnectionTracker,
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

    def sessions(self) -> int:
        """
        How many datagram sessions are open.
        """
        return sum(len(relay.sessions) for relay in self.relays)

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
