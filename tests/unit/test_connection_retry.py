"""
Unit tests for C{--connect-retry}: a target that is not ready is tried again,
with a back-off, while the client waits. On a L{MemoryReactorClock}.
"""

from __future__ import annotations

import errno
import math

from twisted.internet import error
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from socketproxyd.config.settings import ProxySettings
from socketproxyd.events import Ending
from tests.support.fakes import ConnectionTestCase, TransportHarness


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
