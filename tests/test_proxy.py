"""
Unit tests for L{socketproxyd.proxy} on a memory reactor and string
transports: no sockets, no sleeps.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd import logs, splice
from socketproxyd.proxy import ProxyFactory, ProxySettings, ServerProtocol, releaseSpliced
from socketproxyd.proxyheader import headerV1
from socketproxyd.target import parseTarget


class RelayTransport(StringTransport):
    """
    A string transport that records half-close, abort and socket options,
    and delivers C{connectionLost} when closed, as a real one does.
    """

    def __init__(self, peer: IPv4Address | None = None) -> None:
        super().__init__(peerAddress=peer)
        self.writeClosed = False
        self.aborted = False
        self.options: list[tuple[int, int, bytes]] = []
        self.keepalive = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepalive = enabled

    def getHandle(self) -> RelayTransport:
        return self

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.options.append((level, option, value))


class Tracker:
    """
    Records what the factory reports.
    """

    def __init__(self) -> None:
        self.exhausted = 0
        self.opened: list[ServerProtocol] = []
        self.closed: list[ServerProtocol] = []

    def connectionOpened(self, connection: ServerProtocol) -> None:
        self.opened.append(connection)

    def connectionClosed(self, connection: ServerProtocol) -> None:
        self.closed.append(connection)

    def fdsExhausted(self) -> None:
        self.exhausted += 1


class ProxyTestCase(SynchronousTestCase):
    """
    Builds a factory on a L{MemoryReactorClock} and connections through it.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.tracker = Tracker()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        logs.setLevel("debug")
        self.addCleanup(logs.setLevel, "info")

    def factory(self, target: str = "127.0.0.1:8080", **settings: object) -> ProxyFactory:
        target = parseTarget(target)
        proxySettings = ProxySettings(**settings)
        endpoint = target.endpoint(self.reactor, proxySettings.connectTimeout)
        return ProxyFactory(self.reactor, target, endpoint, proxySettings, self.tracker)

    def accept(self, factory: ProxyFactory) -> tuple[ServerProtocol, RelayTransport]:
        server = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        transport = RelayTransport(IPv4Address("TCP", "192.0.2.1", 4000))
        server.makeConnection(transport)
        return server, transport

    def completeConnect(self, index: int = 0) -> tuple[object, RelayTransport]:
        wrappingFactory = self.reactor.tcpClients[index][2]
        client = wrappingFactory.buildProtocol(None)
        transport = RelayTransport()
        client.makeConnection(transport)
        return client, transport

    def connected(self, **settings: object):
        factory = self.factory(**settings)
        server, serverTransport = self.accept(factory)
        client, clientTransport = self.completeConnect()
        return server, serverTransport, client, clientTransport


class ConnectTests(ProxyTestCase):
    """
    Accepting a client and connecting it to the target.
    """

    def test_clientPausedUntilConnected(self) -> None:
        """
        Nothing is read from the client before the target is connected; then
        reading resumes and producers are registered both ways.
        """
        factory = self.factory()
        server, serverTransport = self.accept(factory)
        self.assertEqual(serverTransport.producerState, "paused")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 8080))
        self.assertEqual(self.tracker.opened, [server])
        client, clientTransport = self.completeConnect()
        self.assertEqual(serverTransport.producerState, "producing")
        self.assertIs(serverTransport.producer, clientTransport)
        self.assertIs(clientTransport.producer, serverTransport)
        self.assertTrue(serverTransport.streaming)

    def test_bytesRelayedBothWays(self) -> None:
        server, serverTransport, client, clientTransport = self.connected()
        server.dataReceived(b"request")
        client.dataReceived(b"response")
        self.assertEqual(clientTransport.value(), b"request")
        self.assertEqual(serverTransport.value(), b"response")

    def test_connectRefused(self) -> None:
        """
        A failed connect closes the client and logs a warning naming the
        target and the reason.
        """
        factory = self.factory()
        server, serverTransport = self.accept(factory)
        connector = self.reactor.connectors[0]
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            connector, Failure(error.ConnectionRefusedError())
        )
        self.assertTrue(serverTransport.disconnecting)
        server.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.tracker.closed, [server])
        self.assertEqual(server.ending, "connect failed")
        warnings = [e for e in self.events if "Failed to connect" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["target"], "127.0.0.1:8080")

    def test_outOfFileDescriptors(self) -> None:
        """
        A connect that fails with EMFILE tells the tracker, which pauses
        accepting.
        """
        factory = self.factory()
        self.accept(factory)
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            self.reactor.connectors[0],
            Failure(error.getConnectError(OSError(errno.EMFILE, "Too many open files"))),
        )
        self.assertEqual(self.tracker.exhausted, 1)

    def test_connectTimeoutOfLiteral(self) -> None:
        """
        A literal address has one attempt, bounded by the connector's own
        timeout; when it fires, the client is closed and the end is a
        connect timeout.
        """
        factory = self.factory(connectTimeout=5.0)
        server, serverTransport = self.accept(factory)
        self.assertEqual(self.reactor.tcpClients[0][3], 5.0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            self.reactor.connectors[0], Failure(error.TimeoutError())
        )
        self.assertTrue(serverTransport.disconnecting)
        self.assertEqual(server.ending, "connect timeout")

    def test_connectTimeoutOfName(self) -> None:
        """
        A name's resolution and attempts together are bounded by the
        connect timeout: the attempt is cancelled and the client closed.
        """
        factory = self.factory(connectTimeout=5.0, target="localhost:8080")
        server, serverTransport = self.accept(factory)
        self.reactor.advance(4.9)
        self.assertFalse(serverTransport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(serverTransport.disconnecting)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(server.ending, "connect timeout")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_clientGoneWhileConnecting(self) -> None:
        """
        A client that goes away before the target answers cancels the connect.
        """
        factory = self.factory()
        server, serverTransport = self.accept(factory)
        server.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.tracker.closed, [server])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_proxyHeaderFirst(self) -> None:
        """
        With a PROXY protocol version chosen, its header is the first thing
        the target receives.
        """
        server, serverTransport, client, clientTransport = self.connected(proxyProtocol="v1")
        server.dataReceived(b"GET /")
        expected = headerV1(serverTransport.getPeer(), serverTransport.getHost())
        self.assertEqual(clientTransport.value(), expected + b"GET /")

    def test_keepalive(self) -> None:
        server, serverTransport, client, clientTransport = self.connected(keepalive=True)
        self.assertTrue(serverTransport.keepalive)
        self.assertTrue(clientTransport.keepalive)


class HalfCloseTests(ProxyTestCase):
    """
    End of stream on one side becomes a write shutdown on the other; the
    other direction goes on.
    """

    def test_clientEofShutsDownTargetWriting(self) -> None:
        server, serverTransport, client, clientTransport = self.connected()
        server.readConnectionLost()
        self.assertTrue(clientTransport.writeClosed)
        self.assertIsNone(clientTransport.producer)
        self.assertFalse(serverTransport.disconnecting)
        client.dataReceived(b"reply")
        self.assertEqual(serverTransport.value(), b"reply")

    def test_bothDirectionsDoneCloses(self) -> None:
        """
        Once a side has both read EOF and shut down writing, it is closed;
        the connection is reported closed when both sides are gone.
        """
        server, serverTransport, client, clientTransport = self.connected()
        server.readConnectionLost()
        client.writeConnectionLost()
        client.readConnectionLost()
        self.assertTrue(serverTransport.writeClosed)
        server.writeConnectionLost()
        self.assertTrue(serverTransport.disconnecting)
        self.assertTrue(clientTransport.disconnecting)
        client.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.tracker.closed, [])
        server.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.tracker.closed, [server])
        self.assertEqual(server.ending, None)

    def test_secondEofIgnored(self) -> None:
        """
        Twisted may deliver readConnectionLost twice; the second does nothing.
        """
        server, serverTransport, client, clientTransport = self.connected()
        server.readConnectionLost()
        server.readConnectionLost()
        self.assertTrue(clientTransport.writeClosed)


class ResetTests(ProxyTestCase):
    """
    An error on one side resets the other.
    """

    def test_targetResetResetsClient(self) -> None:
        server, serverTransport, client, clientTransport = self.connected()
        client.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(serverTransport.aborted)
        self.assertIn(
            (socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"),
            serverTransport.options,
        )
        server.connectionLost(Failure(error.ConnectionAborted()))
        self.assertEqual(server.ending, "reset")
        self.assertEqual(self.tracker.closed, [server])

    def test_clientResetResetsTarget(self) -> None:
        server, serverTransport, client, clientTransport = self.connected()
        server.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(clientTransport.aborted)


class IdleTimeoutTests(ProxyTestCase):
    """
    C{idleTimeout} closes a connection that moved no byte either way.
    """

    def test_idleCloses(self) -> None:
        server, serverTransport, client, clientTransport = self.connected(idleTimeout=10.0)
        self.reactor.advance(6)
        client.dataReceived(b"x")
        self.reactor.advance(6)
        server.dataReceived(b"y")
        self.reactor.advance(9.9)
        self.assertFalse(serverTransport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(serverTransport.disconnecting)
        self.assertTrue(clientTransport.disconnecting)
        self.assertEqual(server.ending, "idle timeout")

    def test_noTimerByDefault(self) -> None:
        self.connected()
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class CloseLogTests(ProxyTestCase):
    """
    Every closed connection is logged at debug level with its byte counts.
    """

    def test_closeLine(self) -> None:
        server, serverTransport, client, clientTransport = self.connected()
        server.dataReceived(b"12345")
        client.dataReceived(b"123")
        self.reactor.advance(2)
        client.connectionLost(Failure(error.ConnectionDone()))
        server.connectionLost(Failure(error.ConnectionDone()))
        [event] = [e for e in self.events if "bytes up" in e.get("log_format", "")]
        self.assertEqual((event["up"], event["down"]), (5, 3))
        self.assertEqual(event["peer"], "192.0.2.1:4000")
        self.assertEqual(event["duration"], 2.0)
        self.assertEqual(event["how"], "done")


class SpliceHandOverTests(ProxyTestCase):
    """
    Which endpoint a connection uses, and how a spliced connection's
    transports are ended.
    """

    def test_bareConnectorOnlyForSplicing(self) -> None:
        """
        The bare-socket connector exists for literal targets unless the
        data path is pinned to transports; test transports are not
        spliceable, so they connect through the ordinary endpoint.
        """
        if not splice.available():
            raise SkipTest("splice(2) is not available")
        self.assertIsNotNone(self.factory().bareConnector)
        self.assertIsNone(self.factory(dataPath="transport").bareConnector)
        self.assertIsNone(self.factory("localhost:80").bareConnector)
        server, _, _, _ = self.connected()
        self.assertFalse(server.spliceable)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_releaseSpliced(self) -> None:
        """
        A clean end closes without another shutdown and reports a normal
        end; otherwise the transport hears of an abort (a reset).
        """
        reasons: list[Failure] = []

        class Released:
            _shouldShutdown = True
            connectionLost = reasons.append

        clean, failed = Released(), Released()
        releaseSpliced(clean, True)
        releaseSpliced(failed, False)
        self.assertFalse(clean._shouldShutdown)
        self.assertTrue(failed._shouldShutdown)
        self.assertIsInstance(reasons[0].value, error.ConnectionDone)
        self.assertIsInstance(reasons[1].value, error.ConnectionAborted)
