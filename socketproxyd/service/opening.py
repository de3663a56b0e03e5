# -*- test-case-name: tests.integration.test_routes_listeners -*-
"""
Opening the listeners: the inherited sockets, then every C{--listen}
endpoint, each with its name and on the factory of its route (all routed
before any is opened); and the one-line exit when that cannot be done.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NoReturn, Protocol

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure

from socketproxyd.config.routes import splitListen
from socketproxyd.reactors import ProxyReactor
from socketproxyd.stream.acceptor import adoptable
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.systemd.activation import (
    ActivationError,
    InheritedSocket,
    adopt,
    takeDatagramSocket,
)

if TYPE_CHECKING:
    from socketproxyd.datagram.port import DatagramPort
    from socketproxyd.datagram.relay import DatagramRelay


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
class StreamListener:
    """
    One open stream listener: its port, how log lines call it and the
    factory of its route.
    """

    port: IListeningPort
    label: str
    factory: ProxyFactory


@dataclass(frozen=True)
class DatagramListener:
    """
    One open datagram listener: its port, how log lines call it and its
    relay.
    """

    port: DatagramPort
    label: str
    factory: DatagramRelay


Listener = StreamListener | DatagramListener


class Router(Protocol):
    """
    Gives the factory of the stream listeners of a name, or the relay of a
    datagram listener, given a label to name the listener in an error.
    """

    def factoryFor(self, name: str | None, label: str) -> ProxyFactory:
        """
        @raise RouteError: when no route serves it.
        """

    def relayFor(self, name: str | None, label: str) -> DatagramRelay:
        """
        @raise RouteError: when no route serves it, or it cannot take
            datagrams.
        """


def planListeners(
    reactor: ProxyReactor,
    inherited: Sequence[InheritedSocket],
    descriptions: Sequence[str],
    router: Router,
) -> list[Callable[[], Listener]]:
    """
    Route every inherited socket and C{[NAME=]ENDPOINT} of C{descriptions}
    before anything is opened, so a routing error opens nothing: the plan
    is what opens each listener, in order.

    @raise RouteError: naming the listener no route serves, or a bad name.
    """
    plan: list[Callable[[], Listener]] = []
    opener: Callable[[], Listener]
    for sock in inherited:
        label = sock.describe()
        if sock.datagram:
            relay = router.relayFor(sock.name, label)
            opener = partial(_adoptDatagram, sock, label, relay)
        else:
            factory = router.factoryFor(sock.name, label)
            opener = partial(_adoptStream, reactor, sock, label, factory)
        plan.append(opener)
    for text in descriptions:
        name, description = splitListen(text)
        label = f"--listen={text}"
        if description.startswith("udp:"):
            relay = router.relayFor(name, label)
            opener = partial(_listenUDP, description, text, relay)
        else:
            factory = router.factoryFor(name, label)
            opener = partial(_listen, reactor, description, text, factory)
        plan.append(opener)
    return plan


def _adoptStream(
    reactor: ProxyReactor, inherited: InheritedSocket, label: str, factory: ProxyFactory
) -> StreamListener:
    return StreamListener(adopt(reactor, inherited, factory), label, factory)


def _adoptDatagram(inherited: InheritedSocket, label: str, relay: DatagramRelay) -> Listener:
    return DatagramListener(relay.listenOn(takeDatagramSocket(inherited)), label, relay)


def _listenUDP(description: str, label: str, relay: DatagramRelay) -> Listener:
    """
    Bind C{udp:PORT[:interface=ADDRESS]} (all IPv4 addresses by default).
    """
    _, _, rest = description.partition(":")
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
    return DatagramListener(relay.listenOn(sock), label, relay)


def openListeners(plan: Sequence[Callable[[], Listener]]) -> list[Listener]:
    """
    Open every planned listener.

    @raise StartupError: saying which listener cannot be opened, once what
        was opened is closed again.
    """
    opened: list[Listener] = []
    try:
        for opener in plan:
            opened.append(opener())
    except (ActivationError, StartupError) as e:
        for listener in opened:
            listener.port.stopListening()
        raise StartupError(str(e)) from None
    return opened


def _listen(
    reactor: ProxyReactor, description: str, label: str, factory: ProxyFactory
) -> StreamListener:
    endpoint = serverEndpoint(
        reactor,
        "--listen",
        description,
        "tcp:8080:interface=127.0.0.1, unix:/run/app.sock or udp:53",
    )
    port = listenNow(endpoint, "--listen", description, factory)
    if factory.acceptsHeader and not adoptable(port, factory):
        port.stopListening()
        raise StartupError(
            f"{label}: --accept-proxy-protocol needs a plain TCP or UNIX listener here"
        )
    return StreamListener(port, label, factory)


def serverEndpoint(
    reactor: ProxyReactor, option: str, description: str, examples: str
) -> IStreamServerEndpoint:
    """
    The server endpoint C{description} names, given as C{option}.

    @raise StartupError: saying it is not one, and giving C{examples} of
        what one looks like.
    """
    try:
        return serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        kind = description.split(":", 1)[0]
        why = f" (unknown type {kind!r})" if "Unknown endpoint type" in str(e) else ""
        raise StartupError(
            f"{option}={description}: not a server endpoint{why}; use e.g. {examples}"
        ) from None


def listenNow(
    endpoint: IStreamServerEndpoint, option: str, description: str, factory: IProtocolFactory
) -> IListeningPort:
    """
    Listen on C{endpoint} at once, as Twisted's TCP and UNIX endpoints do,
    so that a listener that cannot be opened is a start-up error.

    @raise StartupError: saying why C{option}'s listener cannot be opened.
    """
    outcome: list[IListeningPort | Failure] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise StartupError(f"{option}={description}: did not bind at once")
    if isinstance(outcome[0], Failure):
        reason = outcome[0].getErrorMessage()
        raise StartupError(f"{option}={description}: cannot listen: {reason}")
    return outcome[0]
