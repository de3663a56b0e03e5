"""
Unit tests for C{--accept-proxy-protocol} on the splice pump: a connection
reads its client's PROXY header (L{socketproxyd.stream.headerreader}) before
it connects, takes the addresses from it, and leaves what follows the
header for the pump; a bad, truncated or late header closes it. Real UNIX
socket pairs; the test is the reactor.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import LogLevel

from socketproxyd.config.settings import ProxySettings
from socketproxyd.events import Ending
from socketproxyd.proxyheader import V2_SIGNATURE, headerV2
from tests.support.fakes import PEER, ConnectionTestCase
from tests.support.splicing import SpliceHarness

V1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 41000 443\r\n"
LOCAL = V2_SIGNATURE + bytes((0x20, 0x00, 0, 0))


class HeaderTests(ConnectionTestCase):
    """
    A connection on the splice pump whose client must send a PROXY header.
    """

    def harness(self, **settings: object) -> SpliceHarness:
        return SpliceHarness(ProxySettings(**settings), self.tracker, self, False, header=True)

    def test_addressesFromTheHeader(self) -> None:
        """
        The header's addresses become the connection's; only what follows
        the header reaches the target, and only once it is complete.
        """
        harness = self.harness()
        harness.clientSends(V1[:20])
        self.assertEqual(harness.connector.attempts, 0)
        harness.clientSends(V1[20:] + b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(harness.connector.attempts, 1)
        self.assertEqual(harness.targetReceived(), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(harness.connection.peer, IPv4Address("TCP", "203.0.113.7", 41000))
        self.assertEqual(harness.connection.host, IPv4Address("TCP", "198.51.100.1", 443))
        self.assertEqual(harness.connection.counts[0], 18)

    def test_oneByteAtATime(self) -> None:
        """
        A v2 header arriving one byte at a time is read whole, and nothing
        of it is forwarded.
        """
        header = headerV2(("2001:db8::7", 5000), ("2001:db8::1", 80))
        harness = self.harness()
        for index in range(len(header)):
            self.assertEqual(harness.connector.attempts, 0)
            harness.clientSends(header[index : index + 1])
        harness.clientSends(b"payload")
        self.assertEqual(harness.targetReceived(), b"payload")
        self.assertEqual(harness.connection.peer, IPv6Address("TCP", "2001:db8::7", 5000))

    def test_forwardedToTheBackend(self) -> None:
        """
        With C{--proxy-protocol}, the header sent to the target names the
        client the received header named.
        """
        harness = self.harness(proxyProtocol="v2")
        harness.clientSends(V1 + b"hi")
        expected = headerV2(("203.0.113.7", 41000), ("198.51.100.1", 443))
        self.assertEqual(harness.targetReceived(), expected + b"hi")

    def test_localHeaderKeepsTheSocketsAddresses(self) -> None:
        """
        A v2 LOCAL header (a health check) is served, with the socket's
        own addresses.
        """
        harness = self.harness()
        harness.clientSends(LOCAL + b"ping")
        self.assertEqual(harness.targetReceived(), b"ping")
        self.assertEqual(harness.connection.peer, PEER)

    def assertClosed(self, harness: SpliceHarness, why: str) -> None:
        self.assertEqual(harness.connector.attempts, 0)
        self.assertIn(harness.clientSees(), ("eof", "reset"))
        self.assertEqual(harness.targetReceived(), b"")
        [closed] = self.tracker.closes
        self.assertIs(closed.ending, Ending.BAD_HEADER)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("no valid PROXY header", warning)
        self.assertIn(why, warning)

    def test_notAHeader(self) -> None:
        """
        A client that speaks first without a header is closed, with a
        warning, and nothing it sent reaches the target.
        """
        harness = self.harness()
        harness.clientSends(b"GET / HTTP/1.0\r\n\r\n")
        self.assertClosed(harness, "not a PROXY header")

    def test_truncated(self) -> None:
        """
        A client that ends before its header does is closed.
        """
        harness = self.harness()
        harness.clientSends(V1[:30])
        harness.clientEof()
        self.assertClosed(harness, "the client ended before its header did")

    def test_late(self) -> None:
        """
        A header not complete within the connect timeout closes the
        connection.
        """
        harness = self.harness(connectTimeout=5.0)
        harness.clientSends(V1[:10])
        harness.advance(4.9)
        self.assertEqual(self.tracker.closes, [])
        harness.advance(0.2)
        self.assertClosed(harness, "none complete within 5s")

    def assertLateAfter(self, due: float, said: str, **settings: object) -> None:
        harness = self.harness(connectTimeout=float("inf"), **settings)
        harness.advance(due - 0.1)
        self.assertEqual(self.tracker.closes, [])
        harness.advance(0.2)
        self.assertClosed(harness, f"none complete within {said}")

    def test_lateWithoutConnectTimeout(self) -> None:
        """
        With an infinite connect timeout the idle timeout bounds the wait
        for the header, so a silent client does not keep its place under
        C{-c} for good.
        """
        self.assertLateAfter(60.0, "60s", idleTimeout=60.0)

    def test_lateWithoutTimeouts(self) -> None:
        """
        With neither a connect timeout nor an idle timeout, 30 s do.
        """
        self.assertLateAfter(30.0, "30s")

    def test_oversized(self) -> None:
        """
        A v2 header whose length is over the maximum is refused as soon as
        its length is read.
        """
        harness = self.harness()
        harness.clientSends(V2_SIGNATURE + bytes((0x21, 0x11, 0x02, 0x09)))
        self.assertClosed(harness, "537 bytes, more than 536")

    def test_countedFromAccept(self) -> None:
        """
        A connection waiting for its header is counted (it takes a place
        under C{-c}) and its close reported.
        """
        harness = self.harness()
        self.assertEqual(len(self.tracker.opens), 1)
        harness.connection.shutdown()
        [closed] = self.tracker.closes
        self.assertIs(closed.ending, Ending.SHUTDOWN)
        self.assertEqual(harness.connector.attempts, 0)
