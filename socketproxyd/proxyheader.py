# -*- test-case-name: tests.unit.test_proxyheader -*-
"""
PROXY protocol headers (haproxy's proxy-protocol.txt, versions 1 and 2), so a
backend behind the proxy learns the real client address.

Addresses are Twisted's C{IPv4Address}/C{IPv6Address} or the socket
module's C{(host, port, ...)} tuples, whichever the caller has: the early
relay builds headers before Twisted is imported, so this module needs only
the standard library.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, cast

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21
_V2_LOCAL = 0x20
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _hostPort(address: object) -> tuple[str, int] | None:
    """
    The IP host and port of C{address}, if it is an IP address.
    """
    if isinstance(address, tuple):
        if len(address) >= 2 and isinstance(address[0], str) and isinstance(address[1], int):
            return address[0], address[1]
        return None
    if getattr(address, "type", None) in ("TCP", "UDP"):
        ip = cast(Any, address)
        return ip.host, ip.port
    return None


def _ipPair(peer: object, local: object) -> tuple[_IP, int, _IP, int] | None:
    peerPair, localPair = _hostPort(peer), _hostPort(local)
    if peerPair is None or localPair is None:
        return None
    try:
        source = ipaddress.ip_address(peerPair[0].split("%", 1)[0])
        destination = ipaddress.ip_address(localPair[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(source, ipaddress.IPv6Address) and isinstance(destination, ipaddress.IPv6Address):
        if source.ipv4_mapped and destination.ipv4_mapped:
            source, destination = source.ipv4_mapped, destination.ipv4_mapped
    if source.version != destination.version:
        return None
    return source, peerPair[1], destination, localPair[1]


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
