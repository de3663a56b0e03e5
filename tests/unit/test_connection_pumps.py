"""
Unit tests for L{socketproxyd.stream.connection}: what every pump does for one
L{Connection} (bytes, PROXY header, half-close, resets, the idle timeout, the
close line), written once in L{PumpBehaviour} and run on each pump.
No sleeps: the transport pump runs on a L{MemoryReactorClock} and string
transports, the splice pump on UNIX socket pairs whose reactor calls the tests
make by hand.
"""

from __future__ import annotations

from twisted.logger import LogLevel

from socketproxyd.config.settings import ProxySettings
from socketproxyd.events import Ending
from socketproxyd.stream.pump import Flow
from tests.support.fakes import ConnectionTestCase, FakeTracker, TransportHarness
from tests.support.splicing import KeepaliveBehaviour, SpliceHarness


class PumpBehaviour:
    """
    What every pump does for a connection, written once: each test body
    runs against every pump through that pump's harness.
    """

    tracker: FakeTracker

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
        harness = self.harness(logsCloses=True)
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


class TransportPumpTests(PumpBehaviour, KeepaliveBehaviour, ConnectionTestCase):
    """
    The shared behaviour on the transport pump.
    """

    def harness(self, **settings: object) -> TransportHarness:
        harness = TransportHarness(ProxySettings(**settings), self.tracker)
        harness.completeConnect()
        return harness


class SplicePumpTests(PumpBehaviour, ConnectionTestCase):
    """
    The shared behaviour on the splice pump (keepalive, which needs TCP
    sockets, is in L{tests.integration.test_connection_keepalive}).
    """

    def harness(self, **settings: object) -> SpliceHarness:
        """
        A connection between UNIX socket pairs, whose sockets move bytes
        synchronously.
        """
        harness = SpliceHarness(ProxySettings(**settings), self.tracker, self, tcp=False)
        self.assertEqual(harness.connector.attempts, 1)
        return harness
