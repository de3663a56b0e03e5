# -*- test-case-name: tests.unit.test_connection_pumps -*-
"""
The transport pump: the design card's data path. A L{ServerProtocol} for
the client and a L{ClientProtocol} for the target, each transport the
other's streaming producer (a slow reader pauses the far side), both
half-closeable. The protocols only relay bytes and report to their
L{socketproxyd.stream.connection.Connection}; it decides everything else.

Each side registers the other I{protocol} as its producer, which pauses
and resumes its own transport: a transport that is lost stops its
producer, and a transport's C{stopProducing} would close it cleanly,
before the connection hears of the loss and resets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast
from typing import Protocol as Structural

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from socketproxyd.events import DOWNSTREAM, UPSTREAM, Ending
from socketproxyd.stream.connection import Connection

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

    from socketproxyd.stream.factory import ProxyFactory


class RelayTransport(Structural):
    """
    What the transport pump asks of a Twisted transport: a TCP or UNIX
    connection is a consumer, a push producer and half-closeable
    (C{ITransport} alone promises only writing and closing).
    """

    def write(self, data: bytes) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def getHost(self) -> IAddress: ...


def _transport(side: Protocol) -> RelayTransport:
    """
    C{side}'s transport, which is connected (Twisted types it as an
    optional bare C{ITransport}).
    """
    return cast(RelayTransport, side.transport)


@implementer(IHalfCloseableProtocol, IPushProducer)
class _Side(Protocol):
    """
    One side of a connection: what it reads is written to the other side,
    which pauses and resumes it as its producer.

    @ivar direction: the direction this side's bytes start (its source).
    @ivar pump: the pump it is part of, once it is.
    @ivar connection: the pump's connection, once both sides are connected
        (and this side reads).
    @ivar destination: the other side's transport, from then on too.
    """

    direction: int
    pump: TransportPump | None = None
    connection: Connection
    destination: RelayTransport

    def dataReceived(self, data: bytes) -> None:
        self.destination.write(data)
        self.connection.moved(self.direction, len(data))

    def readConnectionLost(self) -> None:
        self.connection.readEnded(self.direction)

    def writeConnectionLost(self) -> None:
        self.connection.writeShut(1 - self.direction)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.pump is not None:
            self.pump.sideLost(self, reason)

    def pauseProducing(self) -> None:
        _transport(self).pauseProducing()

    def resumeProducing(self) -> None:
        _transport(self).resumeProducing()

    def stopProducing(self) -> None:
        """
        The other side's transport is gone; how this side ends is the
        connection's decision.
        """


class ServerProtocol(_Side):
    """
    An accepted client on a Twisted transport: paused until the target is
    connected, then one side of a L{TransportPump}.
    """

    direction = UPSTREAM

    def connectionMade(self) -> None:
        transport = _transport(self)
        transport.pauseProducing()
        factory = cast("ProxyFactory", self.factory)
        peer = host = None
        if factory.recordsAddresses:
            peer, host = transport.getPeer(), transport.getHost()
        Connection(factory, TransportPump(self), peer, host).start()


class ClientProtocol(_Side):
    """
    The connection to the target on a Twisted transport, paused until a
    pump takes it.
    """

    direction = DOWNSTREAM

    def connectionMade(self) -> None:
        _transport(self).pauseProducing()


class TransportPump:
    """
    Moves a connection's bytes through two Twisted transports.

    @ivar server: the client's side.
    @ivar client: the target's side, once connected.
    @ivar open: the sides whose transports are not yet lost.
    """

    takesSockets = False
    connection: Connection

    def __init__(self, server: ServerProtocol) -> None:
        self.server = server
        server.pump = self
        self.client: ClientProtocol | None = None
        self.open: set[_Side] = {server}
        self.reported = False

    def clientAddress(self) -> IAddress | None:
        return _transport(self.server).getPeer()

    def adopt(
        self, target: socket.socket, backlogs: Sequence[bytes], ended: Sequence[bool]
    ) -> None:
        """
        This pump takes no sockets, so it adopts none: the early relay
        serves only command lines on the splice path.
        """
        raise TypeError("the transport pump adopts no sockets")

    def attach(self, target: socket.socket | Protocol, preamble: bytes) -> None:
        """
        Relay between the client and C{target}, a L{ClientProtocol}
        (this pump takes no sockets).
        """
        target = cast(ClientProtocol, target)
        server = self.server
        target.pump = self
        self.client = target
        self.open.add(target)
        server.connection = target.connection = self.connection
        serverTransport, clientTransport = _transport(server), _transport(target)
        server.destination = clientTransport
        target.destination = serverTransport
        if preamble:
            clientTransport.write(preamble)
        if self.connection.server.settings.keepalive:
            for transport in (serverTransport, clientTransport):
                setKeepAlive = getattr(transport, "setTcpKeepAlive", None)
                if setKeepAlive is not None:
                    try:
                        setKeepAlive(True)
                    except OSError:
                        pass
        clientTransport.registerProducer(server, True)
        serverTransport.registerProducer(target, True)
        serverTransport.resumeProducing()
        clientTransport.resumeProducing()

    def shutdownWrite(self, direction: int) -> None:
        side = self.client if direction == UPSTREAM else self.server
        assert side is not None, "the target's side is shut only once attached"
        destination = _transport(side)
        destination.unregisterProducer()
        destination.loseWriteConnection()

    def close(self) -> None:
        for side in list(self.open):
            _transport(side).loseConnection()

    def abort(self) -> None:
        for side in list(self.open):
            _transport(side).abortConnection()

    def sideLost(self, side: _Side, reason: Failure) -> None:
        """
        A side's transport is gone: unless the connection asked for it, an
        error resets the other side and a clean close ends the connection;
        once both are gone the pump is closed.
        """
        if side not in self.open:
            return
        self.open.discard(side)
        connection = self.connection
        if not connection.closing:
            if isinstance(reason.value, error.ConnectionDone):
                connection.end(Ending.DONE)
            else:
                connection.failed()
        if not self.open and not self.reported:
            self.reported = True
            connection.closed()
