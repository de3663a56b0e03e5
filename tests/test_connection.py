"""
Unit tests for L{socketproxyd.stream.connection}: one L{Connection} per proxied
connection, driven through each of its pumps. No sleeps: the transport pump
runs on a L{MemoryReactorClock} and string transports, the splice pump on
real socket pairs whose reactor calls the tests make by hand.
"""

from __future__ import annotations

import errno
import math
import socket
import struct
from collections.abc import Callable

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd import logs
from socketproxyd.addresses import describeAddress, socketAddress
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.events import Ending
from socketproxyd.service.closelog import CloseLog
from socketproxyd.stream.connection import Connection
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.stream.pump import Flow
from socketproxyd.stream.splice import pipes
from socketproxyd.stream.splice.pump import SplicePump
from socketproxyd.stream.transportpump import ClientProtocol

from .fakes import FakeFDReactor

PEER = IPv4Address("TCP", "192.0.2.1", 4000)
HOST = IPv4Address("TCP", "192.0.2.2", 8000)
LINGER_RESET = struct.pack("ii", 1, 0)


class Tracker:
    """
    Records what the factory's connections report, and logs each close as
    the service does at debug level (its L{CloseLog} consumer).
    """

    def __init__(self) -> None:
        self.exhausted = 0
        self.waiting: list[Callable[[], None]] = []
        self.opens: list[Connection] = []
        self.closes: list[Connection] = []

    def opened(self, connection: Connection) -> None:
        self.opens.append(connection)

    def closed(self, connection: Connection) -> None:
        self.closes.append(connection)
        CloseLog(connection.server.reactor).closed(connection)

    def room(self) -> int:
        return 10

    def fdsExhausted(self) -> None:
        self.exhausted += 1

    def waitForDescriptors(self, again: Callable[[], None]) -> None:
        self.waiting.append(again)


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
        self, settings: ProxySettings, tracker: Tracker, target: str = "127.0.0.1:8080"
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


class RecordingSocket(socket.socket):
    """
    A socket that remembers whether it was set to close with a reset (on
    a UNIX socket the kernel sends none, so the test asks the socket).
    """

    lingerReset = False

    def setsockopt(self, level: int, option: int, value: object, *rest: object) -> None:
        if (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.lingerReset = value == LINGER_RESET
        super().setsockopt(level, option, value, *rest)


class Outside:
    """
    The far end of one of the proxy's sockets: what it sent and received.
    """

    def __init__(self, sock: socket.socket, inside: RecordingSocket) -> None:
        self.socket = sock
        self.inside = inside
        self.received = b""
        self.eof = False
        self.closed = False

    def read(self) -> bool:
        """
        Read what has arrived; whether anything had.
        """
        if self.eof or self.closed:
            return False
        got = False
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return got
            except ConnectionResetError:
                self.eof = True
                return True
            if not data:
                self.eof = True
                return True
            self.received += data
            got = True

    def sees(self) -> str:
        if self.inside.lingerReset and self.inside.fileno() == -1:
            return "reset"
        self.read()
        return "eof" if self.eof else "open"


class SocketConnector:
    """
    Stands in for the factory's bare connector: the target is already
    connected, on C{sock}.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.attempts = 0

    def attempt(self, fallbackFactory: object) -> socket.socket:
        self.attempts += 1
        return self.socket


class SpliceHarness:
    """
    A connection on the splice pump between two real socket pairs (UNIX
    ones, or TCP ones on the loopback interface), the target's handed over
    by a L{SocketConnector} in the factory; the test is the reactor,
    calling C{doRead} and C{doWrite} until all is quiet.
    """

    def __init__(
        self, settings: ProxySettings, tracker: Tracker, test: SynchronousTestCase, tcp: bool
    ) -> None:
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.reactor = FakeFDReactor()
        self.tracker = tracker
        self.client = self._pair(test, tcp)
        self.target = self._pair(test, tcp)
        self.factory = ProxyFactory(self.reactor, parseTarget("127.0.0.1:8080"), settings, tracker)
        self.connector = self.factory.bareConnector = SocketConnector(self.target.inside)
        pump = SplicePump(
            self.reactor, self.factory.sweeper, self.client.inside, settings.keepalive
        )
        self.connection = Connection(self.factory, pump, PEER, HOST)
        self.connection.start()
        self.settle()

    @staticmethod
    def _pair(test: SynchronousTestCase, tcp: bool) -> Outside:
        if tcp:
            listener = socket.create_server(("127.0.0.1", 0))
            test.addCleanup(listener.close)
            outside = socket.create_connection(listener.getsockname())
            plain, _ = listener.accept()
        else:
            outside, plain = socket.socketpair()
        inside = RecordingSocket(plain.family, plain.type, fileno=plain.detach())
        for sock in (outside, inside):
            sock.setblocking(False)
            test.addCleanup(sock.close)
        return Outside(outside, inside)

    def settle(self) -> None:
        """
        Make the reactor's calls for every registered reader and writer
        until they move nothing more.
        """
        for _ in range(1000):
            before = self._state()
            for reader in list(self.reactor.readers):
                if reader in self.reactor.readers:
                    reader.doRead()
            for writer in list(self.reactor.writers):
                if writer in self.reactor.writers:
                    writer.doWrite()
            if self._state() == before:
                return
        raise AssertionError("the splice pump never settles")

    def _state(self) -> tuple[object, ...]:
        connection = self.connection
        return (
            tuple(connection.counts),
            tuple(connection.flows),
            connection.closing,
            tuple((end.pending, len(end.backlog)) for end in connection.pump.ends),
            frozenset(self.reactor.readers),
            frozenset(self.reactor.writers),
        )

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.settle()

    def _send(self, outside: Outside, data: bytes) -> None:
        peer = self.target if outside is self.client else self.client
        while data:
            try:
                data = data[outside.socket.send(data) :]
            except BlockingIOError:
                peer.read()
            self.settle()

    def clientSends(self, data: bytes) -> None:
        self._send(self.client, data)

    def targetSends(self, data: bytes) -> None:
        self._send(self.target, data)

    def _eof(self, outside: Outside) -> None:
        outside.socket.shutdown(socket.SHUT_WR)
        self.settle()

    def clientEof(self) -> None:
        self._eof(self.client)

    def targetEof(self) -> None:
        self._eof(self.target)

    def _reset(self, outside: Outside) -> None:
        """
        Close C{outside} with bytes it did not read: on a UNIX socket, that
        is what resets its peer.
        """
        assert outside.socket.recv(1, socket.MSG_PEEK), "a reset needs unread bytes"
        outside.socket.close()
        outside.closed = True
        self.settle()

    def clientResets(self) -> None:
        self._reset(self.client)

    def targetResets(self) -> None:
        self._reset(self.target)

    def _received(self, outside: Outside) -> bytes:
        while outside.read():
            self.settle()
        return outside.received

    def clientReceived(self) -> bytes:
        return self._received(self.client)

    def targetReceived(self) -> bytes:
        return self._received(self.target)

    def clientSees(self) -> str:
        return self.client.sees()

    def targetSees(self) -> str:
        return self.target.sees()

    def keepalive(self) -> tuple[bool, bool]:
        return tuple(
            bool(side.inside.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
            for side in (self.client, self.target)
        )


class ConnectionTestCase(SynchronousTestCase):
    """
    Records the tracker's reports and the connection's log lines, with
    debug lines shown.
    """

    def setUp(self) -> None:
        self.tracker = Tracker()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        logs.setLevel("debug")
        self.addCleanup(logs.setLevel, "info")

    def lines(self, level: LogLevel) -> list[str]:
        """
        The text of the connection's and its factory's log lines at C{level}.
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


class PumpBehaviour:
    """
    What every pump does for a connection, written once: each test body
    runs against every pump through that pump's harness.
    """

    tracker: Tracker

    def harness(self, **settings: object) -> TransportHarness | SpliceHarness:
        """
        A connection on this pump, with the target connected.
        """
        raise NotImplementedError

    def assertOpen(self, harness: TransportHarness | SpliceHarness) -> None:
        self.assertEqual((harness.clientSees(), harness.targetSees()), ("open", "open"))
        self.assertEqual(self.tracker.closes, [])
        self.assertIsNone(harness.connection.ending)

    def assertEnded(self, harness: TransportHarness | SpliceHarness, how: Ending) -> None:
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertIs(harness.connection.ending, how)

    def test_bytesBothWays(self) -> None:
        """
        Bytes go each way and are counted per direction; nothing closes.
        """
        harness = self.harness()
        harness.clientSends(b"request")
        harness.targetSends(b"response!")
        self.assertEqual(harness.targetReceived(), b"request")
        self.assertEqual(harness.clientReceived(), b"response!")
        self.assertEqual(harness.connection.counts, [7, 9])
        self.assertOpen(harness)

    def test_bulkBothWays(self) -> None:
        """
        More bytes than any socket buffer holds go through each way whole
        and in order.
        """
        harness = self.harness()
        data = bytes(range(256)) * 4096
        harness.clientSends(data)
        self.assertEqual(harness.targetReceived(), data)
        harness.targetSends(data[::-1])
        self.assertEqual(harness.clientReceived(), data[::-1])
        self.assertEqual(harness.connection.counts, [len(data), len(data)])
        self.assertOpen(harness)

    def test_proxyHeaderFirst(self) -> None:
        """
        With a PROXY protocol version chosen, its header is the first thing
        the target receives; it is not counted.
        """
        harness = self.harness(proxyProtocol="v1")
        harness.clientSends(b"GET /")
        self.assertEqual(
            harness.targetReceived(), b"PROXY TCP4 192.0.2.1 192.0.2.2 4000 8000\r\nGET /"
        )
        self.assertEqual(harness.connection.counts, [5, 0])

    def test_keepalive(self) -> None:
        """
        TCP keepalive is enabled on both sockets when asked for, and only
        then.
        """
        self.assertEqual(self.harness(keepalive=True).keepalive(), (True, True))
        self.assertEqual(self.harness().keepalive(), (False, False))

    def test_clientHalfCloseThenReply(self) -> None:
        """
        The client's end of stream reaches the target after its request;
        the reply still comes back, and the target's end of stream then
        finishes the connection.
        """
        harness = self.harness()
        harness.clientSends(b"request")
        harness.clientEof()
        self.assertEqual(harness.targetReceived(), b"request")
        self.assertEqual((harness.clientSees(), harness.targetSees()), ("open", "eof"))
        self.assertEqual(harness.connection.flows, [Flow.SHUT, Flow.OPEN])
        self.assertEqual(self.tracker.closes, [])
        harness.targetSends(b"reply")
        self.assertEqual(harness.clientReceived(), b"reply")
        self.assertEqual(harness.connection.counts, [7, 5])
        harness.targetEof()
        self.assertEqual(harness.clientSees(), "eof")
        self.assertEqual(harness.connection.flows, [Flow.SHUT, Flow.SHUT])
        self.assertEnded(harness, Ending.DONE)

    def test_targetHalfClose(self) -> None:
        """
        The target's end of stream reaches the client after what the target
        sent; the client may still send, and its end of stream then
        finishes the connection.
        """
        harness = self.harness()
        harness.targetSends(b"banner")
        harness.targetEof()
        self.assertEqual(harness.clientReceived(), b"banner")
        self.assertEqual((harness.clientSees(), harness.targetSees()), ("eof", "open"))
        self.assertEqual(harness.connection.flows, [Flow.OPEN, Flow.SHUT])
        self.assertEqual(self.tracker.closes, [])
        harness.clientSends(b"more")
        self.assertEqual(harness.targetReceived(), b"more")
        harness.clientEof()
        self.assertEqual(harness.targetSees(), "eof")
        self.assertEqual(harness.connection.counts, [4, 6])
        self.assertEnded(harness, Ending.DONE)

    def test_targetResetResetsClient(self) -> None:
        """
        A reset from the target resets the client: the connection ends as
        a reset.
        """
        harness = self.harness()
        harness.clientSends(b"request")
        harness.targetResets()
        self.assertEqual(harness.clientSees(), "reset")
        self.assertEnded(harness, Ending.RESET)

    def test_clientResetResetsTarget(self) -> None:
        """
        A reset from the client resets the target: the connection ends as
        a reset.
        """
        harness = self.harness()
        harness.targetSends(b"reply")
        harness.clientResets()
        self.assertEqual(harness.targetSees(), "reset")
        self.assertEnded(harness, Ending.RESET)

    def test_resetAfterHalfCloseResetsTarget(self) -> None:
        """
        A client that resets after its end of stream was forwarded resets
        the target too, once the proxy learns of it (a half-closed socket
        is not read, so that is the next write to it): the first side's
        loss does not close the other cleanly.
        """
        harness = self.harness()
        harness.clientSends(b"request")
        harness.clientEof()
        self.assertEqual(harness.targetSees(), "eof")
        harness.targetSends(b"part of a reply")
        harness.clientResets()
        harness.targetSends(b"the rest")
        self.assertEqual(harness.targetSees(), "reset")
        self.assertEnded(harness, Ending.RESET)

    def test_resetAfterHalfCloseResetsClient(self) -> None:
        """
        Likewise a target that resets after its end of stream was
        forwarded resets the client, once the proxy learns of it.
        """
        harness = self.harness()
        harness.targetSends(b"banner")
        harness.targetEof()
        self.assertEqual(harness.clientSees(), "eof")
        harness.clientSends(b"a late request")
        harness.targetResets()
        harness.clientSends(b"more")
        self.assertEqual(harness.clientSees(), "reset")
        self.assertEnded(harness, Ending.RESET)

    def test_idleTimeoutSinceLastByte(self) -> None:
        """
        With an idle timeout, the connection is closed exactly that long
        after the last byte either way, and not before.
        """
        harness = self.harness(idleTimeout=10.0)
        self.assertEqual([call.getTime() for call in harness.reactor.getDelayedCalls()], [10.0])
        harness.advance(6)
        harness.targetSends(b"x")
        harness.advance(6)
        harness.clientSends(b"y")
        harness.advance(9.9)
        self.assertOpen(harness)
        harness.advance(0.1)
        self.assertEqual((harness.clientSees(), harness.targetSees()), ("eof", "eof"))
        self.assertEnded(harness, Ending.IDLE_TIMEOUT)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_noIdleTimerByDefault(self) -> None:
        """
        Without an idle timeout, a connected connection has no timer.
        """
        harness = self.harness()
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_closeLine(self) -> None:
        """
        A closed connection is logged at debug level with its listener,
        client, target, byte counts, duration and how it ended.
        """
        harness = self.harness()
        harness.clientSends(b"12345")
        harness.targetSends(b"123")
        harness.advance(2)
        harness.clientEof()
        self.assertEqual(self.lines(LogLevel.debug), [])
        harness.targetEof()
        self.assertEqual(
            self.lines(LogLevel.debug),
            [
                "192.0.2.2:8000 192.0.2.1:4000 -> 127.0.0.1:8080: "
                "5 bytes up, 3 bytes down, 2.000s, done"
            ],
        )


class TransportPumpTests(PumpBehaviour, ConnectionTestCase):
    """
    The shared behaviour on the transport pump.
    """

    def harness(self, **settings: object) -> TransportHarness:
        harness = TransportHarness(ProxySettings(**settings), self.tracker)
        harness.completeConnect()
        return harness


class SplicePumpTests(PumpBehaviour, ConnectionTestCase):
    """
    The shared behaviour on the splice pump.
    """

    def harness(self, **settings: object) -> SpliceHarness:
        """
        A connection between UNIX socket pairs, whose sockets move bytes
        synchronously; between TCP ones on the loopback interface for the
        keepalive test, which moves none.
        """
        tcp = "keepalive" in settings
        harness = SpliceHarness(ProxySettings(**settings), self.tracker, self, tcp)
        self.assertEqual(harness.connector.attempts, 1)
        return harness


class TransportConnectTests(ConnectionTestCase):
    """
    A client accepted on a transport, connected to the target through the
    factory's endpoint.
    """

    def accept(self, target: str = "127.0.0.1:8080", **settings: object) -> TransportHarness:
        return TransportHarness(ProxySettings(**settings), self.tracker, target)

    def failConnect(self, harness: TransportHarness, reason: Exception) -> None:
        """
        The endpoint's connector reports that the attempt failed.
        """
        reactor = harness.reactor
        reactor.tcpClients[0][2].clientConnectionFailed(reactor.connectors[0], Failure(reason))

    def test_clientPausedUntilConnected(self) -> None:
        """
        Nothing is read from the client before the target is connected
        (through the endpoint, even where a bare connector exists); then
        both sides produce and each side is the other's streaming
        producer, pausing and resuming its own transport.
        """
        harness = self.accept()
        self.assertEqual(harness.serverTransport.producerState, "paused")
        self.assertEqual(harness.reactor.tcpClients[0][:2], ("127.0.0.1", 8080))
        self.assertEqual(self.tracker.opens, [harness.connection])
        harness.completeConnect()
        self.assertEqual(len(harness.reactor.tcpClients), 1)
        self.assertIsInstance(harness.client, ClientProtocol)
        self.assertEqual(harness.serverTransport.producerState, "producing")
        self.assertEqual(harness.clientTransport.producerState, "producing")
        self.assertIs(harness.serverTransport.producer, harness.client)
        self.assertIs(harness.clientTransport.producer, harness.server)
        self.assertTrue(harness.serverTransport.streaming)
        self.assertTrue(harness.clientTransport.streaming)
        harness.serverTransport.producer.pauseProducing()
        self.assertEqual(harness.clientTransport.producerState, "paused")
        harness.serverTransport.producer.resumeProducing()
        self.assertEqual(harness.clientTransport.producerState, "producing")
        harness.clientTransport.producer.stopProducing()
        self.assertFalse(harness.serverTransport.disconnecting)

    def test_connectRefused(self) -> None:
        """
        A refused connect closes the client and warns, naming the target,
        the client and the reason; the close line says the connect failed.
        """
        harness = self.accept()
        self.failConnect(harness, error.ConnectionRefusedError())
        self.assertTrue(harness.serverTransport.disconnecting)
        self.assertFalse(harness.serverTransport.aborted)
        self.assertEqual(self.tracker.closes, [])
        harness.settle()
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertIs(harness.connection.ending, Ending.CONNECT_FAILED)
        self.assertEqual(self.tracker.exhausted, 0)
        self.assertEqual(
            self.lines(LogLevel.warn),
            [
                "Failed to connect to 127.0.0.1:8080 for 192.0.2.1:4000: "
                "Connection was refused by other side."
            ],
        )
        self.assertEqual(
            self.lines(LogLevel.debug),
            [
                "192.0.2.2:8000 192.0.2.1:4000 -> 127.0.0.1:8080: "
                "0 bytes up, 0 bytes down, 0.000s, connect failed"
            ],
        )
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_connectRefusedWithoutAddresses(self) -> None:
        """
        When nothing needs the connection's addresses it keeps none, and
        the warning asks the pump for the client's address.
        """
        logs.setLevel("info")
        harness = self.accept()
        self.assertIsNone(harness.connection.peer)
        self.failConnect(harness, error.ConnectionRefusedError())
        harness.settle()
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertEqual(
            self.lines(LogLevel.warn),
            [
                "Failed to connect to 127.0.0.1:8080 for 192.0.2.1:4000: "
                "Connection was refused by other side."
            ],
        )

    def test_outOfFileDescriptors(self) -> None:
        """
        A connect that fails for want of file descriptors tells the tracker,
        which pauses accepting, and waits there without a warning, its
        client kept and its connect timer running from the first try;
        tried again, it connects.
        """
        harness = self.accept()
        outOfFds = OSError(errno.EMFILE, "Too many open files")
        self.failConnect(harness, error.getConnectError(outOfFds))
        harness.settle()
        self.assertEqual(self.tracker.exhausted, 1)
        self.assertEqual(self.tracker.waiting, [harness.connection.connectAgain])
        self.assertIsNone(harness.connection.ending)
        self.assertEqual(harness.serverTransport.sees(), "open")
        self.assertEqual(self.lines(LogLevel.warn), [])
        harness.reactor.advance(10)
        harness.connection.connect()
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        self.assertEqual([call.getTime() for call in harness.reactor.getDelayedCalls()], [30.0])
        harness.reactor.tcpClients.pop(0)
        harness.completeConnect()
        harness.clientSends(b"late")
        self.assertEqual(harness.targetReceived(), b"late")
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        self.assertEqual(self.tracker.closes, [])

    def test_connectTimeoutOfLiteral(self) -> None:
        """
        The connection's one timer bounds the connect: when it fires the
        attempt is cancelled, the client closed, and the warning says no
        answer came.
        """
        harness = self.accept(connectTimeout=5.0)
        self.assertEqual(harness.reactor.tcpClients[0][3], 5.0)
        self.assertEqual([call.getTime() for call in harness.reactor.getDelayedCalls()], [5.0])
        harness.advance(4.9)
        self.assertFalse(harness.serverTransport.disconnecting)
        harness.advance(0.1)
        self.assertTrue(harness.reactor.connectors[0].stoppedConnecting)
        self.assertTrue(harness.serverTransport.disconnecting)
        self.assertIs(harness.connection.ending, Ending.CONNECT_TIMEOUT)
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertEqual(
            self.lines(LogLevel.warn),
            ["Failed to connect to 127.0.0.1:8080 for 192.0.2.1:4000: no answer within 5s"],
        )
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_connectorTimeoutOfLiteral(self) -> None:
        """
        A timeout the connector reports itself ends the connection the same
        way, and cancels the connection's timer.
        """
        harness = self.accept(connectTimeout=5.0)
        self.failConnect(harness, error.TimeoutError())
        harness.settle()
        self.assertIs(harness.connection.ending, Ending.CONNECT_TIMEOUT)
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertEqual(
            self.lines(LogLevel.warn),
            ["Failed to connect to 127.0.0.1:8080 for 192.0.2.1:4000: no answer within 5s"],
        )
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_connectTimeoutOfName(self) -> None:
        """
        A name's resolution and attempts together are bounded by the
        connection's timer: the attempt is cancelled and the client closed.
        """
        harness = self.accept("localhost:8080", connectTimeout=5.0)
        harness.advance(4.9)
        self.assertFalse(harness.serverTransport.disconnecting)
        harness.advance(0.1)
        self.assertTrue(harness.serverTransport.disconnecting)
        self.assertTrue(harness.reactor.connectors[0].stoppedConnecting)
        self.assertIs(harness.connection.ending, Ending.CONNECT_TIMEOUT)
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertEqual(
            self.lines(LogLevel.warn),
            ["Failed to connect to localhost:8080 for 192.0.2.1:4000: no answer within 5s"],
        )
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_clientGoneWhileConnecting(self) -> None:
        """
        A client that goes away before the target answers cancels the
        connect and its timer, without a warning; the connector reporting
        the cancelled attempt's end later changes nothing.
        """
        harness = self.accept()
        harness.clientResets()
        self.assertTrue(harness.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertIs(harness.connection.ending, Ending.RESET)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        self.failConnect(harness, error.UserError())
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertEqual(self.lines(LogLevel.warn), [])
        self.assertEqual(
            self.lines(LogLevel.debug),
            [
                "192.0.2.2:8000 192.0.2.1:4000 -> 127.0.0.1:8080: "
                "0 bytes up, 0 bytes down, 0.000s, reset"
            ],
        )


class ConnectRetryTests(ConnectionTestCase):
    """
    With C{--connect-retry}, a target that is not ready is tried again
    while the client waits.
    """

    def accept(self, **settings: object) -> TransportHarness:
        settings.setdefault("connectRetry", 5.0)
        return TransportHarness(ProxySettings(**settings), self.tracker)

    def refuse(self, harness: TransportHarness, reason: Exception | None = None) -> float:
        """
        Fail the latest attempt; the delay until the next, if one is due.
        """
        reactor = harness.reactor
        reason = reason if reason is not None else error.ConnectionRefusedError()
        reactor.tcpClients[-1][2].clientConnectionFailed(reactor.connectors[-1], Failure(reason))
        harness.settle()
        calls = reactor.getDelayedCalls()
        return calls[0].getTime() - reactor.seconds() if calls else math.inf

    def test_retriesUntilReady(self) -> None:
        """
        A refused connect is tried again after 10 ms, then 20 ms, ... while
        the client stays open and unread; once the target accepts, bytes
        flow. One warning for the episode, one line when it ends.
        """
        harness = self.accept()
        delays = []
        for _ in range(3):
            delays.append(round(self.refuse(harness), 6))
            self.assertEqual(harness.serverTransport.producerState, "paused")
            self.assertFalse(harness.serverTransport.disconnecting)
            harness.advance(delays[-1])
        self.assertEqual(delays, [0.01, 0.02, 0.04])
        self.assertEqual(len(harness.reactor.tcpClients), 4)
        harness.completeConnect()
        harness.clientSends(b"request")
        self.assertEqual(harness.targetReceived(), b"request")
        self.assertEqual(
            self.lines(LogLevel.warn),
            [
                "127.0.0.1:8080 is not ready (Connection was refused by other side.); "
                "clients wait up to 5s for it"
            ],
        )
        self.assertIn("127.0.0.1:8080 is ready", self.lines(LogLevel.info))
        self.assertEqual(self.tracker.closes, [])

    def test_givesUpAfterTheSpan(self) -> None:
        """
        The back-off doubles up to 1 s; a target still not ready when the
        span is over fails the connection as without the option.
        """
        harness = self.accept()
        delays = []
        while True:
            delay = self.refuse(harness)
            if math.isinf(delay):
                break
            delays.append(round(delay, 6))
            harness.advance(delay)
        self.assertEqual(delays[:7], [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64])
        self.assertEqual(set(delays[7:-1]), {1.0})
        self.assertAlmostEqual(harness.reactor.seconds(), 5.0)
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertIs(harness.connection.ending, Ending.CONNECT_FAILED)
        warnings = self.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 2, warnings)
        self.assertTrue(warnings[1].startswith("Failed to connect to 127.0.0.1:8080"))

    def test_notReadyErrors(self) -> None:
        """
        A missing UNIX socket and a full backlog are retried like a refusal;
        other errors fail at once.
        """
        for code in (errno.ENOENT, errno.EAGAIN, errno.ECONNREFUSED):
            self.assertFalse(math.isinf(self.refuse(self.accept(), error.ConnectError(code))))
        for reason in (error.ConnectError(errno.EHOSTUNREACH), error.DNSLookupError()):
            harness = self.accept()
            self.assertTrue(math.isinf(self.refuse(harness, reason)))
            self.assertIs(harness.connection.ending, Ending.CONNECT_FAILED)

    def test_offByDefault(self) -> None:
        harness = self.accept(connectRetry=0.0)
        self.assertTrue(math.isinf(self.refuse(harness)))
        self.assertIs(harness.connection.ending, Ending.CONNECT_FAILED)

    def test_eachAttemptHasItsConnectTimeout(self) -> None:
        """
        The connect timeout bounds each attempt, from its own start.
        """
        harness = self.accept(connectTimeout=2.0)
        harness.advance(1.5)
        self.refuse(harness)
        harness.advance(0.01)
        self.assertEqual(
            [call.getTime() for call in harness.reactor.getDelayedCalls()], [1.51 + 2.0]
        )
        harness.advance(2.0)
        self.assertIs(harness.connection.ending, Ending.CONNECT_TIMEOUT)

    def test_shutdownWhileWaiting(self) -> None:
        """
        Closing a connection that waits for the target cancels the retry,
        and ends the episode: the next client to wait says so again.
        """
        harness = self.accept()
        self.refuse(harness)
        self.assertTrue(harness.factory.notReady.said)
        harness.connection.end(Ending.SHUTDOWN, reset=True)
        harness.settle()
        self.assertFalse(harness.factory.notReady.said)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertEqual(len(harness.reactor.tcpClients), 1)


class TransportHalfCloseTests(ConnectionTestCase):
    """
    End of stream on one transport becomes a write shutdown on the other,
    step by step.
    """

    def connected(self) -> TransportHarness:
        harness = TransportHarness(ProxySettings(), self.tracker)
        harness.completeConnect()
        return harness

    def test_clientEofShutsDownTargetWriting(self) -> None:
        """
        The client's end of stream unregisters the client as the target's
        producer and shuts down writing to the target; the direction is
        shut once the transport says so, and the reply still flows.
        """
        harness = self.connected()
        harness.server.readConnectionLost()
        self.assertEqual(harness.clientTransport.writeCloses, 1)
        self.assertIsNone(harness.clientTransport.producer)
        self.assertIs(harness.serverTransport.producer, harness.client)
        self.assertEqual(harness.connection.flows, [Flow.ENDED, Flow.OPEN])
        harness.settle()
        self.assertEqual(harness.connection.flows, [Flow.SHUT, Flow.OPEN])
        self.assertFalse(harness.serverTransport.disconnecting)
        harness.client.dataReceived(b"reply")
        self.assertEqual(harness.serverTransport.value(), b"reply")

    def test_bothDirectionsDoneCloses(self) -> None:
        """
        Once both directions are shut both transports are closed (at once,
        as Twisted closes a transport whose writing is shut down), and the
        connection is reported closed when both are gone.
        """
        harness = self.connected()
        harness.server.readConnectionLost()
        harness.settle()
        harness.client.readConnectionLost()
        self.assertEqual(harness.serverTransport.writeCloses, 1)
        self.assertFalse(harness.serverTransport.disconnecting)
        self.assertEqual(self.tracker.closes, [])
        harness.deliverOne()
        self.assertTrue(harness.serverTransport.lost)
        self.assertTrue(harness.clientTransport.lost)
        self.assertFalse(harness.serverTransport.aborted or harness.clientTransport.aborted)
        self.assertEqual(harness.deliveries, [])
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertIs(harness.connection.ending, Ending.DONE)

    def test_secondEofIgnored(self) -> None:
        """
        Twisted may deliver C{readConnectionLost} twice; the second does
        nothing.
        """
        harness = self.connected()
        harness.server.readConnectionLost()
        harness.server.readConnectionLost()
        self.assertEqual(harness.clientTransport.writeCloses, 1)
        self.assertEqual(harness.connection.flows, [Flow.ENDED, Flow.OPEN])


class FactoryTests(ConnectionTestCase):
    """
    How the factory connects each pump to the target.
    """

    def factory(self, target: str = "127.0.0.1:8080", **settings: object) -> ProxyFactory:
        return ProxyFactory(
            MemoryReactorClock(), parseTarget(target), ProxySettings(**settings), self.tracker
        )

    def test_bareConnectorOnlyForSplicing(self) -> None:
        """
        The bare-socket connector exists for literal targets unless the
        data path is pinned to transports.
        """
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.assertTrue(self.factory().splices)
        self.assertIsNotNone(self.factory().bareConnector)
        self.assertFalse(self.factory(dataPath="transport").splices)
        self.assertIsNone(self.factory(dataPath="transport").bareConnector)
        self.assertIsNone(self.factory("localhost:80").bareConnector)

    def test_connectTargetByPump(self) -> None:
        """
        A pump that takes sockets connects through the bare connector; one
        that does not, through the endpoint.
        """
        factory = self.factory()
        connector = factory.bareConnector = SocketConnector(socket.socket)
        self.assertIs(factory.connectTarget(True), socket.socket)
        self.assertEqual(connector.attempts, 1)
        self.assertEqual(factory.reactor.tcpClients, [])
        factory.connectTarget(False)
        self.assertEqual(connector.attempts, 1)
        self.assertEqual(factory.reactor.tcpClients[0][:2], ("127.0.0.1", 8080))


class AddressTests(SynchronousTestCase):
    """
    Addresses as log lines show them and as sockets give them.
    """

    def test_describeAddress(self) -> None:
        """
        IPv4 is C{host:port}, IPv6 C{[host]:port}, a UNIX socket its path,
        an abstract one C{@name}, an unnamed one says so.
        """
        self.assertEqual(describeAddress(PEER), "192.0.2.1:4000")
        self.assertEqual(
            describeAddress(IPv6Address("TCP", "2001:db8::1", 443)), "[2001:db8::1]:443"
        )
        self.assertEqual(describeAddress(UNIXAddress(b"/run/app.sock")), "/run/app.sock")
        self.assertEqual(describeAddress(UNIXAddress(b"\0app")), "@app")
        self.assertEqual(describeAddress(UNIXAddress(None)), "unix:(unnamed)")

    def test_socketAddress(self) -> None:
        """
        A socket's address becomes Twisted's address object for its family.
        """
        self.assertEqual(socketAddress(socket.AF_INET, ("192.0.2.1", 4000)), PEER)
        self.assertEqual(
            socketAddress(socket.AF_INET6, ("2001:db8::1", 443, 1, 2)),
            IPv6Address("TCP", "2001:db8::1", 443, 1, 2),
        )
        self.assertEqual(
            socketAddress(socket.AF_UNIX, "/run/app.sock"), UNIXAddress("/run/app.sock")
        )
        self.assertEqual(socketAddress(socket.AF_UNIX, ""), UNIXAddress(None))
