"""
Tests for L{socketproxyd.proxyheader}, against haproxy's examples.
"""

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.proxyheader import V2_SIGNATURE, headerV1, headerV2


class HeaderTests(SynchronousTestCase):
    def test_v1(self) -> None:
        peer = IPv4Address("TCP", "192.0.2.1", 56324)
        local = IPv4Address("TCP", "192.0.2.2", 443)
        self.assertEqual(headerV1(peer, local), b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n")

    def test_v1IPv6AndMapped(self) -> None:
        peer = IPv6Address("TCP", "2001:db8::1", 1000)
        local = IPv6Address("TCP", "2001:db8::2", 80)
        self.assertEqual(headerV1(peer, local), b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 80\r\n")
        mapped = headerV1(
            IPv6Address("TCP", "::ffff:192.0.2.1", 1000), IPv6Address("TCP", "::ffff:192.0.2.2", 80)
        )
        self.assertEqual(mapped, b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n")

    def test_v1Unix(self) -> None:
        self.assertEqual(headerV1(UNIXAddress(None), UNIXAddress(b"/a")), b"PROXY UNKNOWN\r\n")

    def test_v2(self) -> None:
        peer = IPv4Address("TCP", "192.0.2.1", 56324)
        local = IPv4Address("TCP", "192.0.2.2", 443)
        header = headerV2(peer, local)
        self.assertEqual(header[:12], V2_SIGNATURE)
        self.assertEqual(header[12:16], b"\x21\x11\x00\x0c")
        self.assertEqual(header[16:], bytes([192, 0, 2, 1, 192, 0, 2, 2, 0xDC, 0x04, 0x01, 0xBB]))

    def test_v2Local(self) -> None:
        header = headerV2(UNIXAddress(None), UNIXAddress(b"/a"))
        self.assertEqual(header, V2_SIGNATURE + b"\x20\x00\x00\x00")
