# -*- test-case-name: tests.test_proxy -*-
"""
The data path: one L{ServerProtocol} per accepted client, one
L{ClientProtocol} per connection to the target, bytes relayed both ways with
flow control, half-close and reset propagation.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from .bareconnect import ABORTED, CLEAN_END, BareTarget, resetOnClose
from .fdlimit import FdBudget
from .logs import debugEnabled, observer
from .proxyheader import HEADERS
from .splice import PipeSweeper, Splicer, spliceable
from .splice import available as spliceAvailable
from .timespan import formatTimespan

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


def describeAddress(address: IAddress) -> str:
    """
    An address as the log lines show it: C{host:port}, C{[v6]:port} or a path.
    """
    host = getattr(address, "host", None)
    if host is not None:
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if not name:
        return "unix:(unnamed)"
    return "@" + name[1:] if name.startswith("\0") else name


def _sendNow(transport: object, data: bytes) -> int:
    """
    Send C{data} straight on a transport's socket; how much went out.
    """
    try:
        return transport.socket.send(data)
    except OSError:
        return 0


def resetConnection(transport: object) -> None:
    """
    Close a transport at once with a TCP RST, so its peer sees a failure
    rather than a normal end of stream.
    """
    handle = getattr(transport, "getHandle", None)
    if handle is not None:
        resetOnClose(handle())
    transport.abortConnection()


def releaseSpliced(transport: object, clean: bool) -> None:
    """
    End a transport whose socket the splicer held in the reactor's place.

    The socket is out of the reactor and nothing is queued on it, so there
    is nothing to flush: the transport is told its connection is lost now,
    as the reactor would tell it, instead of being put back in the reactor
    for a close that would take another wake-up. A clean end had both
    directions shut down already, so the socket is closed without another
    C{shutdown}; otherwise it is closed with a reset.
    """
    if clean:
        if hasattr(transport, "_shouldShutdown"):
            transport._shouldShutdown = False
        transport.connectionLost(CLEAN_END)
    else:
        transport.connectionLost(ABORTED)


class ConnectionTracker(TypingProtocol):
    """
    What the factory reports each proxied connection's start and end to.
    """

    def connectionOpened(self, connection: ServerProtocol) -> None: ...

    def connectionClosed(self, connection: ServerProtocol) -> None: ...

    def fdsExhausted(self) -> None: ...


@dataclass(frozen=True)
class ProxySettings:
    """
    The per-connection behaviour chosen on the command line.

    @ivar connectTimeout: seconds to reach the target, all addresses together.
    @ivar idleTimeout: seconds without a byte either way before closing;
        C{math.inf} for never.
    @ivar keepalive: whether to enable TCP keepalive on both sockets.
    @ivar proxyProtocol: C{None}, C{"v1"} or C{"v2"}.
    @ivar dataPath: C{"auto"} (splice where both sockets allow it),
        C{"splice"} or C{"transport"} (Twisted transports only).
    """

    connectTimeout: float = 30.0
    idleTimeout: float = math.inf
    keepalive: bool = False
    proxyProtocol: str | None = None
    dataPath: str = "auto"


@implementer(IHalfCloseableProtocol)
class _Relay(Protocol):
    """
    One side of a proxied connection: what it reads is written to the other
    side, its end of stream becomes a write shutdown there.

    @ivar peer: the other side, once both are connected.
    @ivar owner: the L{ServerProtocol} that keeps the connection's state.
    @ivar received: bytes read from this side.
    """

    peer: _Relay | None = None
    owner: ServerProtocol
    received = 0
    readDone = False
    writeDone = False
    lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.peer.transport.write(data)
        if self.owner.idleTimed:
            self.owner.resetTimeout()

    def readConnectionLost(self) -> None:
        """
        Forward the end of stream: shut down writing on the other side once
        what it has queued is out. Twisted may call this twice when a paused
        reader is resumed after EOF; the second call does nothing.
        """
        if self.readDone:
            return
        self.readDone = True
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.unregisterProducer()
            peer.transport.loseWriteConnection()
        self._closeWhenDone()

    def writeConnectionLost(self) -> None:
        self.writeDone = True
        self._closeWhenDone()

    def _closeWhenDone(self) -> None:
        if self.readDone and self.writeDone:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        self.lost = True
        self.owner.sideLost(self, reason)


class ClientProtocol(_Relay):
    """
    The proxy's connection to the target, relaying to the accepted client.
    """

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        if self.peer is not None:
            super().connectionLost(reason)
        else:
            self.lost = True


class ServerProtocol(_Relay, TimeoutMixin):
    """
    An accepted client. It owns the whole proxied connection: the connect to
    the target, the timers, the byte counts and how it ended.
    """

    log = Logger(observer=observer)
    factory: ProxyFactory
    ending: str | None = None
    idleTimed = False
    splicer: Splicer | None = None
    spliceable = False
    peerAddress: IAddress | None = None
    hostAddress: IAddress | None = None
    started = 0.0

    def __init__(self) -> None:
        self.owner = self
        self.connecting: Deferred | None = None
        self.client: ClientProtocol | BareTarget | None = None

    def callLater(self, period: float, func: Callable[[], object]) -> object:
        return self.factory.reactor.callLater(period, func)

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        factory = self.factory
        if factory.recordsAddresses:
            self.peerAddress = self.transport.getPeer()
            self.hostAddress = self.transport.getHost()
            self.started = factory.reactor.seconds()
        factory.tracker.connectionOpened(self)
        self.spliceable = factory.splices and spliceable(self.transport)
        if self.spliceable and factory.bareConnector is not None:
            attempt = factory.bareConnector.attempt(factory.clientFactory)
            if isinstance(attempt, BareTarget):
                self._connected(attempt)
                return
            self.connecting = attempt
        else:
            self.connecting = factory.endpoint.connect(factory.clientFactory)
        if not factory.target.boundsItsConnect:
            timer = factory.reactor.callLater(
                factory.settings.connectTimeout, self._connectTimedOut
            )

            def stopTimer(result: object) -> object:
                if timer.active():
                    timer.cancel()
                return result

            self.connecting.addBoth(stopTimer)
        self.connecting.addCallbacks(self._connected, self._connectFailed)

    def _connectTimedOut(self) -> None:
        self.ending = "connect timeout"
        self.connecting.cancel()

    def _connected(self, client: ClientProtocol | BareTarget) -> None:
        self.connecting = None
        client.owner = self
        client.peer = self
        self.client = client
        if self.lost:
            client.transport.loseConnection()
            return
        self.peer = client
        settings = self.factory.settings
        splicing = self.spliceable and (
            isinstance(client, BareTarget) or spliceable(client.transport)
        )
        if settings.proxyProtocol is not None:
            header = HEADERS[settings.proxyProtocol](self.peerAddress, self.hostAddress)
            if splicing:
                header = header[_sendNow(client.transport, header) :]
                splicing = not header
            if header and isinstance(client, BareTarget):
                self.abort("reset")
                return
            if header:
                client.transport.write(header)
        if settings.keepalive:
            for transport in (self.transport, client.transport):
                if hasattr(transport, "setTcpKeepAlive"):
                    transport.setTcpKeepAlive(True)
        if not math.isinf(settings.idleTimeout):
            self.setTimeout(settings.idleTimeout)
            self.idleTimed = True
        if splicing:
            self.splicer = Splicer(
                self.factory.reactor, self.factory.sweeper, self, self, client, self.idleTimed
            )
            self.splicer.start()
            return
        self._relayWithTransports()

    def _relayWithTransports(self) -> None:
        """
        Relay through the Twisted transports, each the other's streaming
        producer, so a slow reader pauses the far side.
        """
        client = self.client
        client.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(client.transport, True)
        self.transport.resumeProducing()

    def spliceOutOfFds(self) -> None:
        """
        The splicer could not open a pipe for want of fds.
        """
        self.factory.tracker.fdsExhausted()

    def spliceEnded(self, how: str) -> None:
        """
        The splicer gave the sockets back: both directions finished, or one
        socket failed and the connection is reset.
        """
        self.splicer = None
        if how != "done" and self.ending is None:
            self.ending = how
        releaseSpliced(self.transport, how == "done")
        releaseSpliced(self.client.transport, how == "done")

    def _connectFailed(self, reason: Failure) -> None:
        self.connecting = None
        if self.lost:
            return
        if self.ending is None and reason.check(error.TimeoutError):
            self.ending = "connect timeout"
        if self.ending is None:
            self.ending = "connect failed"
            why = reason.getErrorMessage()
            if reason.check(error.ConnectError) and reason.value.osError in _OUT_OF_FDS:
                self.factory.tracker.fdsExhausted()
        elif self.ending == "connect timeout":
            timeout = self.factory.settings.connectTimeout
            why = f"no answer within {formatTimespan(timeout)}"
        else:
            self.transport.loseConnection()
            return
        self.log.warn(
            "Failed to connect to {target} for {peer}: {why}",
            target=str(self.factory.target),
            peer=describeAddress(self.peerAddress or self.transport.getPeer()),
            why=why,
        )
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        """
        No byte moved either way for the idle timeout: close both sides.
        """
        self.close("idle timeout")

    def close(self, how: str) -> None:
        """
        End the connection now with a normal close of both sides (queued
        bytes are still sent), recording C{how} as the reason.
        """
        self._end(how, lambda transport: transport.loseConnection())

    def abort(self, how: str) -> None:
        """
        End the connection now, dropping queued bytes, recording C{how} as
        the reason.
        """
        self._end(how, lambda transport: transport.abortConnection())

    def _end(self, how: str, closeTransport: Callable[[object], None]) -> None:
        if self.ending is None:
            self.ending = how
        if self.splicer is not None:
            self.splicer.stop()
            self.splicer = None
        if self.connecting is not None:
            self.connecting.cancel()
        for side in (self, self.client):
            if side is not None and not side.lost:
                closeTransport(side.transport)

    def sideLost(self, side: _Relay, reason: Failure) -> None:
        """
        One side's transport is gone. An error there (a reset, a failed
        write) resets the other side too; once both are gone the connection
        is reported closed.
        """
        if side is self:
            self.setTimeout(None)
            if self.connecting is not None:
                self.connecting.cancel()
        other = self.client if side is self else self
        if not isinstance(reason.value, error.ConnectionDone) and self.ending is None:
            self.ending = "reset"
            if other is not None and not other.lost:
                resetConnection(other.transport)
        if self.lost and (self.client is None or self.client.lost):
            self._finished()

    def _finished(self) -> None:
        factory = self.factory
        factory.tracker.connectionClosed(self)
        if self.hostAddress is None:
            return
        upstream = self.received
        downstream = self.client.received if self.client is not None else 0
        self.log.debug(
            "{listener} {peer} -> {target}: {up} bytes up, {down} bytes down, "
            "{duration:.3f}s, {how}",
            listener=describeAddress(self.hostAddress),
            peer=describeAddress(self.peerAddress),
            target=str(factory.target),
            up=upstream,
            down=downstream,
            duration=factory.reactor.seconds() - self.started,
            how=self.ending or "done",
        )


class ProxyFactory(ServerFactory):
    """
    Builds a L{ServerProtocol} for every client accepted on any listener,
    all forwarded to one target.

    @ivar endpoint: the target's client endpoint, shared by all connections.
    @ivar splices: whether connections between plain sockets are spliced
        (the data path allows it and the platform has splice(2)).
    @ivar bareConnector: connects the target for connections that are
        spliced (see L{socketproxyd.bareconnect}), or C{None}.
    @ivar clientFactory: builds the L{ClientProtocol} of each connection.
    @ivar recordsAddresses: whether connections keep their addresses and
        start time, which only a PROXY header and the debug close line use
        (the log level is set before the factory is built).
    """

    protocol = ServerProtocol
    noisy = False

    def __init__(
        self,
        reactor: IReactorTime,
        target: object,
        endpoint: IStreamClientEndpoint,
        settings: ProxySettings,
        tracker: ConnectionTracker,
        budget: FdBudget | None = None,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.endpoint = endpoint
        self.splices = settings.dataPath != "transport" and spliceAvailable()
        self.bareConnector = None
        if self.splices:
            self.bareConnector = target.bareConnector(reactor, settings.connectTimeout, endpoint)
        self.settings = settings
        self.recordsAddresses = settings.proxyProtocol is not None or debugEnabled()
        self.tracker = tracker
        self.clientFactory = Factory.forProtocol(ClientProtocol)
        self.clientFactory.noisy = False
        self.sweeper = PipeSweeper(reactor, budget)
