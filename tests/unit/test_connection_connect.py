"""
Unit tests for how a L{socketproxyd.stream.connection.Connection} on the transport
pump connects to its target: the client paused until then, refusals,
running out of descriptors, and the connect timeout. On a
L{MemoryReactorClock} and string transports.
"""

from __future__ import annotations

import errno

from twisted.internet import error
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from socketproxyd.config.settings import ProxySettings
from socketproxyd.events import Ending
from socketproxyd.stream.transportpump import ClientProtocol
from tests.support.fakes import ConnectionTestCase, TransportHarness


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
        harness = self.accept(logsCloses=True)
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
        harness = self.accept(logsCloses=True)
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
