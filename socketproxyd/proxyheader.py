# -*- test-case-name: tests.unit.test_proxyheader -*-
"""
PROXY protocol headers (haproxy's proxy-protocol.txt, versions 1 and 2), so a
backend behind the proxy learns the real client address.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.address import IPv4Address, IPv6Address

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21
_V2_LOCAL = 0x20
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ipPair(peer: object, local: object) -> tuple[_IP, int, _IP, int] | None:
    if not isinstance(peer, (IPv4Address, IPv6Address)) or not isinstance(
        local, (IPv4Address, IPv6Address)
    ):
        return None
    source = ipaddress.ip_address(peer.host.split("%", 1)[0])
    destination = ipaddress.ip_address(local.host.split("%", 1)[0])
    if isinstance(source, ipaddress.IPv6Address) and isinstance(destination, ipaddress.IPv6Address):
        if source.ipv4_mapped and destination.ipv4_mapped:
            source, destination = source.ipv4_mapped, destination.ipv4_mapped
    if source.version != destination.version:
        return None
    return source, peer.port, destination, local.port


def headerV1(peer: object, local: object) -> bytes:
    """
    The text header: C{PROXY TCP4|TCP6 src dst sport dport}, or
    C{PROXY UNKNOWN} for UNIX clients.
    """
    pair = _ipPair(peer, local)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    source, sourcePort, destination, destinationPort = pair
    family = "TCP4" if source.version == 4 else "TCP6"
    return (f"PROXY {family} {source} {destination} {sourcePort} {destinationPort}\r\n").encode(
        "ascii"
    )


def headerV2(peer: object, local: object, datagram: bool = False) -> bytes:
    """
    The binary header (transport C{STREAM}, or C{DGRAM} for a datagram
    session); a C{LOCAL} command without addresses for UNIX clients.
    """
    pair = _ipPair(peer, local)
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)
    source, sourcePort, destination, destinationPort = pair
    family = (_V2_TCP4 if source.version == 4 else _V2_TCP6) + datagram
    body = source.packed + destination.packed + struct.pack("!HH", sourcePort, destinationPort)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


HEADERS = {"v1": headerV1, "v2": headerV2}
