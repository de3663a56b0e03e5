"""
Tests for L{socketproxyd.proxyheader}, against haproxy's examples.
"""

import ipaddress
import random

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


class AddressTextTests(SynchronousTestCase):
    """
    The header writes addresses as C{ipaddress} does, without importing it.
    """

    def test_asIpaddressWritesThem(self) -> None:
        """
        For IPv4 and IPv6 addresses of every shape of zero runs (none, one
        group, ties, leading, trailing, all, IPv4-mapped) and random ones,
        the text in a v1 header is C{str(ipaddress.ip_address(...))}.
        """
        rng = random.Random(19)
        addresses = [
            "0.0.0.0", "255.255.255.255", "10.0.0.1", "::", "::1", "1::", "1:0:1:1:1:1:1:1",
            "1:0:0:1:0:0:1:1", "0:0:1:0:0:0:1:0", "fe80::1:2", "2001:db8::", "::ffff:1.2.3.4",
            "::1.2.3.4", "1:2:3:4:5:6:7:8",
        ]  # fmt: skip
        for _ in range(2000):
            groups = [rng.choice((0, 0, 0, 1, 0xFFFF, rng.randrange(0x10000))) for _ in range(8)]
            addresses.append(
                str(ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in groups)))
            )
            addresses.append(str(ipaddress.IPv4Address(rng.randrange(2**32))))
        for text in addresses:
            address = ipaddress.ip_address(text)
            other = "::2" if address.version == 6 else "10.9.9.9"
            if address.version == 6 and address.ipv4_mapped:
                other = "::3"
            header = headerV1((text, 1), (other, 2))
            self.assertEqual(header.split(b" ")[2].decode(), str(address), text)
