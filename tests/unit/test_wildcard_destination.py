"""
Unit tests for L{socketproxyd.datagram.packetinfo}: how the kernel's packet
information becomes a session key, a PROXY header address and the control
message of a reply.
"""

from __future__ import annotations

import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.datagram.packetinfo import IP_PKTINFO, destinationKey, destinationOf


class DestinationTests(SynchronousTestCase):
    """
    How the kernel's packet information becomes a session key, a PROXY
    header address and the control message of a reply.
    """

    timestamp = (socket.SOL_SOCKET, 29, bytes(16))

    def ipv4(self, local: str, destination: str, ifindex: int = 3) -> tuple[int, int, bytes]:
        packed = struct.pack(
            "=i4s4s", ifindex, socket.inet_aton(local), socket.inet_aton(destination)
        )
        return (socket.IPPROTO_IP, IP_PKTINFO, packed)

    def test_keyIsTheDestinationWhateverComesFirst(self) -> None:
        first = destinationKey([self.timestamp, self.ipv4("10.5.0.1", "10.5.0.255")])
        again = destinationKey([self.ipv4("10.5.0.1", "10.5.0.255", ifindex=7)])
        self.assertEqual(first, socket.inet_aton("10.5.0.255"))
        self.assertEqual(first, again)
        self.assertIsNone(destinationKey([self.timestamp]))

    def test_ipv4RepliesFromTheLocalAddress(self) -> None:
        found = destinationOf(socket.AF_INET, 53, [self.ipv4("10.5.0.1", "10.5.0.255")])
        self.assertEqual((found.address.host, found.address.port), ("10.5.0.255", 53))
        [(level, kind, control)] = found.control
        self.assertEqual(
            struct.unpack("=i4s4s", control), (0, socket.inet_aton("10.5.0.1"), bytes(4))
        )

    def test_queuedBeforeTheOption(self) -> None:
        """
        A datagram queued before C{IP_PKTINFO} was set has no local
        address noted: a unicast destination is the answer, a multicast
        one leaves the source to routing.
        """
        found = destinationOf(socket.AF_INET, 53, [self.ipv4("0.0.0.0", "127.0.0.2")])
        self.assertEqual(found.control[0][2][4:8], socket.inet_aton("127.0.0.2"))
        found = destinationOf(socket.AF_INET, 53, [self.ipv4("0.0.0.0", "239.1.2.3")])
        self.assertIsNone(found.control)

    def test_mappedOnDualStack(self) -> None:
        found = destinationOf(socket.AF_INET6, 53, [self.ipv4("127.0.0.3", "127.0.0.3")])
        self.assertEqual(found.address.host, "::ffff:127.0.0.3")

    def test_ipv6(self) -> None:
        """
        An IPv6 reply leaves from the destination with the interface left
        to routing; from a multicast destination, routing picks the source.
        """
        info = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
        data = socket.inet_pton(socket.AF_INET6, "fd00::5") + struct.pack("=I", 4)
        found = destinationOf(socket.AF_INET6, 53, [(*info, data)])
        self.assertEqual(found.address.host, "fd00::5")
        self.assertEqual(found.control[0][2], data[:16] + bytes(4))
        data = socket.inet_pton(socket.AF_INET6, "ff15::1234") + struct.pack("=I", 4)
        found = destinationOf(socket.AF_INET6, 53, [(*info, data)])
        self.assertIsNone(found.control)
