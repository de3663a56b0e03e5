"""
Doubles for the unit tests, on a fake or memory reactor: a clock that
records readers and writers, the one tracker double (L{FakeTracker}),
string transports and the harness that drives a connection on the
transport pump by hand, the connection test case, and the stand-ins a
splice pump is handed (its connection, a paused Twisted transport).
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd import logs
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.events import DOWNSTREAM, UPSTREAM, Ending, Served
from socketproxyd.service.closelog import CloseLog
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.stream.splice.pump import SplicePump
from socketproxyd.stream.transportpump import ClientProtocol


class FakeFDReactor(Clock):
    """
    A clock that also records which readers and writers are registered, for
    code that puts its own descriptors in the reactor; the tests make the
    reactor's calls by hand.
    """

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[object] = set()
        self.writers: set[object] = set()

    def addReader(self, reader: object) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: object) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: object) -> None:
        self.writers.discard(writer)


class FakeTracker:
    """
    The one stand-in for the tracker a L{socketproxyd.stream.factory.ProxyFactory},
    a L{socketproxyd.datagram.relay.DatagramRelay} or an acceptor reports to:
    it has C{room} (10 unless told; tests may set C{free}) and records
    every report.

    Each close also goes to a L{CloseLog}, as the service's ledger passes
    it on when the settings log closes (C{logsCloses}, at debug level), so
    the close line can be tested with the path.

    @ivar free: what L{room} answers.
    @ivar opens: the connections or sessions reported opened, in order.
    @ivar closes: the connections or sessions reported closed, in order.
    @ivar exhausted: how many times descriptors were reported exhausted.
    @ivar waiting: what to call again once descriptors are free, in order.
    """

    def __init__(self, room: int = 10) -> None:
        self.free = room
        self.opens: list[Served] = []
        self.closes: list[Served] = []
        self.exhausted = 0
        self.waiting: list[Callable[[], None]] = []

    def room(self) -> int:
        return self.free

    def opened(self, served: Served) -> None:
        self.opens.append(served)

    def closed(self, served: Served) -> None:
        self.closes.append(served)
        CloseLog(served.server.reactor).closed(served)

    def fdsExhausted(self) -> None:
        self.exhausted += 1

    def waitForDescriptors(self, again: Callable[[], None]) -> None:
        self.waiting.append(again)


PEER = IPv4Address("TCP", "192.0.2.1", 4000)


HOST = IPv4Address("TCP", "192.0.2.2", 8000)


LINGER_RESET = struct.pack("ii", 1, 0)


class RelayTransport(StringTransport):
    """
    A string transport that records half-close, abort and socket options,
    and, as a real one does, tells its protocol of a write shutdown or a
    close later, once C{deliveries} is run (see L{TransportHarness.settle}).

    @ivar writeCloses: how many times writing was shut down.
    @ivar lingerReset: whether closing the socket would send a reset.
    @ivar lost: whether the protocol heard C{connectionLost}.
    """

    def __init__(
        self, deliveries: list[tuple[RelayTransport, Callable[[], None]]], peer: object
    ) -> None:
        super().__init__(hostAddress=HOST, peerAddress=peer)
        self.deliveries = deliveries
        self.protocol: Protocol | None = None
        self.writeCloses = 0
        self.aborted = False
        self.lingerReset = False
        self.keepalive = False
        self.lost = False

    def connect(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def loseWriteConnection(self) -> None:
        self.writeCloses += 1
        self.deliveries.append((self, lambda: self.protocol.writeConnectionLost()))

    def loseConnection(self) -> None:
        """
        Close as Twisted's transports do: at once if writing is already
        shut down, otherwise once the buffer is out.
        """
        if self.writeCloses and not self.disconnecting:
            self.disconnecting = True
            self.connectionLost(error.ConnectionDone())
            return
        self._close(error.ConnectionDone())

    def stopProducing(self) -> None:
        """
        A transport is a producer whose C{stopProducing} closes it.
        """
        self.loseConnection()

    def abortConnection(self) -> None:
        """
        Abort as Twisted's TCP and UNIX transports do: the socket is
        closed with a zero linger, which sends a reset.
        """
        self.aborted = True
        self.lingerReset = True
        self._close(error.ConnectionAborted())

    def _close(self, reason: Exception) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.deliveries.append((self, lambda: self.connectionLost(reason)))

    def connectionLost(self, reason: Exception) -> None:
        """
        The socket is gone: the protocol hears it, once.
        """
        if not self.lost:
            self.lost = True
            if self.producer is not None:
                producer, self.producer = self.producer, None
                producer.stopProducing()
            self.protocol.connectionLost(Failure(reason))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepalive = enabled

    def getHandle(self) -> RelayTransport:
        return self

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        if (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.lingerReset = value == LINGER_RESET

    def sees(self) -> str:
        """
        What the peer of this socket sees of the proxy's side: C{"open"},
        C{"eof"} or C{"reset"} (an abort with a zero linger).
        """
        if self.aborted and self.lingerReset:
            return "reset"
        if self.writeCloses or self.disconnecting:
            return "eof"
        return "open"


class TransportHarness:
    """
    A connection on the transport pump: the client's L{ServerProtocol} and
    the target's L{ClientProtocol} on L{RelayTransport}s, the target
    connected through the factory's endpoint on a L{MemoryReactorClock}.
    """

    def __init__(
        self, settings: ProxySettings, tracker: FakeTracker, target: str = "127.0.0.1:8080"
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.tracker = tracker
        self.deliveries: list[tuple[RelayTransport, Callable[[], None]]] = []
        self.factory = ProxyFactory(self.reactor, parseTarget(target), settings, tracker)
        self.server = self.factory.buildProtocol(PEER)
        self.serverTransport = RelayTransport(self.deliveries, PEER)
        self.serverTransport.connect(self.server)
        self.connection = self.server.pump.connection
        self.client: ClientProtocol | None = None
        self.clientTransport: RelayTransport | None = None

    def completeConnect(self) -> None:
        """
        The target accepts the connection the factory's endpoint started.
        """
        wrapper = self.reactor.tcpClients[-1][2].buildProtocol(None)
        self.clientTransport = RelayTransport(self.deliveries, None)
        self.clientTransport.connect(wrapper)
        self.client = self.server.pump.client
        self.settle()

    def deliverOne(self) -> None:
        """
        Deliver the oldest of what the transports owe their protocols.
        """
        transport, delivery = self.deliveries.pop(0)
        if not transport.lost:
            delivery()

    def settle(self) -> None:
        """
        Deliver what the transports owe their protocols, until nothing is
        left.
        """
        while self.deliveries:
            self.deliverOne()

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.settle()

    def clientSends(self, data: bytes) -> None:
        self.server.dataReceived(data)
        self.settle()

    def clientEof(self) -> None:
        self.server.readConnectionLost()
        self.settle()

    def clientResets(self) -> None:
        self.serverTransport.connectionLost(error.ConnectionLost())
        self.settle()

    def targetSends(self, data: bytes) -> None:
        self.clientTransport.protocol.dataReceived(data)
        self.settle()

    def targetEof(self) -> None:
        self.clientTransport.protocol.readConnectionLost()
        self.settle()

    def targetResets(self) -> None:
        self.clientTransport.connectionLost(error.ConnectionLost())
        self.settle()

    def clientReceived(self) -> bytes:
        return self.serverTransport.value()

    def targetReceived(self) -> bytes:
        return self.clientTransport.value()

    def clientSees(self) -> str:
        return self.serverTransport.sees()

    def targetSees(self) -> str:
        return self.clientTransport.sees()

    def keepalive(self) -> tuple[bool, bool]:
        return self.serverTransport.keepalive, self.clientTransport.keepalive


class ConnectionTestCase(SynchronousTestCase):
    """
    Records the tracker's reports and the connection's log lines, with
    debug lines shown.
    """

    def setUp(self) -> None:
        self.tracker = FakeTracker()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        logs.setLevel("debug")
        self.addCleanup(logs.setLevel, "info")

    def lines(self, level: LogLevel) -> list[str]:
        """
        The text of the connection's, its factory's and its close line's
        log lines at C{level}.
        """
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_namespace", "").startswith(
                (
                    "socketproxyd.stream.connection",
                    "socketproxyd.stream.factory",
                    "socketproxyd.service.closelog",
                )
            )
            and event["log_level"] is level
        ]


class RecordingConnection:
    """
    Stands in for the L{socketproxyd.stream.connection.Connection} of a pump:
    records every report, and answers as the real one does: an end of
    stream is forwarded at once (unless C{forwardEnds} is false), both
    directions shut close the pump, a failure aborts it.

    @ivar moves: every C{moved} report, as C{(direction, count)}.
    @ivar readEnds: the directions reported ended, in order.
    @ivar writeShuts: the directions reported shut, in order.
    @ivar failures: how many times the pump reported a failure.
    @ivar closings: how many times the pump reported it closed.
    """

    def __init__(self, pump: SplicePump, forwardEnds: bool = True) -> None:
        self.pump = pump
        pump.connection = self
        self.forwardEnds = forwardEnds
        self.moves: list[tuple[int, int]] = []
        self.readEnds: list[int] = []
        self.writeShuts: list[int] = []
        self.failures = 0
        self.closings = 0
        self.ending = False

    def counts(self) -> tuple[int, int]:
        """
        Bytes moved upstream and downstream.
        """
        return (
            sum(count for direction, count in self.moves if direction == UPSTREAM),
            sum(count for direction, count in self.moves if direction == DOWNSTREAM),
        )

    def moved(self, direction: int, count: int) -> None:
        self.moves.append((direction, count))

    def readEnded(self, direction: int) -> None:
        self.readEnds.append(direction)
        if self.forwardEnds and not self.ending:
            self.pump.shutdownWrite(direction)

    def writeShut(self, direction: int) -> None:
        self.writeShuts.append(direction)
        if set(self.writeShuts) == {UPSTREAM, DOWNSTREAM}:
            self.end(reset=False)

    def failed(self) -> None:
        self.failures += 1
        self.end(reset=True)

    def end(self, reset: bool) -> None:
        if self.ending:
            return
        self.ending = True
        if reset:
            self.pump.abort()
        else:
            self.pump.close()

    def closed(self) -> None:
        self.closings += 1


class PausedTransport:
    """
    The parts of a paused Twisted transport a pump borrows the socket of.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.reading = self.writing = True
        self.calls: list[str] = []

    def getHandle(self) -> socket.socket:
        return self.socket

    def stopReading(self) -> None:
        self.reading = False

    def stopWriting(self) -> None:
        self.writing = False

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")


class TransportProtocol:
    """
    A protocol on a Twisted transport, as a fallback endpoint gives it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.transport = PausedTransport(sock)


class FakePort:
    """
    A listening port that records its reading state (and whether it was
    closed), for what starts and stops accepting.
    """

    def __init__(self) -> None:
        self.reading = True
        self.stopped = False

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8000)


@dataclass(eq=False)
class FakeRouteServer:
    """
    A route's server as the metrics collector reads it: its name, connect
    retries and dropped datagrams.
    """

    route: str | None
    connectRetries: int = 0
    drops: Counter[str] = field(default_factory=Counter)


@dataclass
class FakeListening:
    """
    The listeners' route servers, as the collector reads them.
    """

    factories: dict[str | None, FakeRouteServer] = field(default_factory=dict)
    relays: list[FakeRouteServer] = field(default_factory=list)


@dataclass(eq=False)
class FakeServed:
    """
    A served client as the ledger sees it: a connection, or a session
    when it has datagram counts.
    """

    server: FakeRouteServer
    counts: list[int] = field(default_factory=lambda: [0, 0])
    datagrams: list[int] | None = None
    started: float = 0.0
    connected: float = 0.0
    ending: Ending | None = None

    def addresses(self) -> None:
        return None

    def shutdown(self) -> None:
        pass
