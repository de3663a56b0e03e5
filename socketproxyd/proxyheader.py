# -*- test-case-name: tests.unit.test_proxyheader -*-
"""
PROXY protocol headers (haproxy's proxy-protocol.txt, versions 1 and 2), so a
backend behind the proxy learns the real client address.

Addresses are Twisted's C{IPv4Address}/C{IPv6Address} or the socket
module's C{(host, port, ...)} tuples, whichever the caller has. The early
relay builds headers before anything else is imported, so this module uses
only the interpreter's built-in C{_socket} (C{ipaddress} and C{struct}
would cost its first client 4-7 ms): addresses are parsed with
C{inet_pton}, and IPv6 ones written as C{ipaddress} writes them (RFC 5952).
"""

from __future__ import annotations

import _socket

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21
_V2_LOCAL = 0x20
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _hostPort(address: object) -> tuple[str, int] | None:
    """
    The IP host and port of C{address}, if it is an IP address.
    """
    if isinstance(address, tuple):
        if len(address) >= 2 and isinstance(address[0], str) and isinstance(address[1], int):
            return address[0], address[1]
        return None
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if getattr(address, "type", None) in ("TCP", "UDP") and isinstance(host, str):
        if isinstance(port, int):
            return host, port
    return None


def _packed(host: str) -> bytes | None:
    """
    The 4 or 16 bytes of an IP address (without its IPv6 scope).
    """
    host = host.split("%", 1)[0]
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            return _socket.inet_pton(family, host)
        except OSError:
            pass
    return None


def _text(packed: bytes) -> str:
    """
    An address as C{ipaddress} writes it: dotted for IPv4; for IPv6, hex
    groups with the first longest run of two or more zero groups as C{::}.
    """
    if len(packed) == 4:
        return ".".join(str(byte) for byte in packed)
    groups = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best, bestLength, start = -1, 0, -1
    for index, group in enumerate(groups):
        if group:
            start = -1
            continue
        if start < 0:
            start = index
        if index - start + 1 > bestLength:
            best, bestLength = start, index - start + 1
    parts = [f"{group:x}" for group in groups]
    if bestLength > 1:
        parts[best : best + bestLength] = [""]
        if best == 0:
            parts.insert(0, "")
        if best + bestLength == 8:
            parts.append("")
    return ":".join(parts)


def _ipPair(peer: object, local: object) -> tuple[bytes, int, bytes, int] | None:
    """
    The packed source and destination addresses and their ports, if both
    are IP addresses of one version (IPv4-mapped IPv6 ones read as IPv4).
    """
    peerPair, localPair = _hostPort(peer), _hostPort(local)
    if peerPair is None or localPair is None:
        return None
    source, destination = _packed(peerPair[0]), _packed(localPair[0])
    if source is None or destination is None:
        return None
    if source.startswith(_MAPPED) and destination.startswith(_MAPPED):
        source, destination = source[12:], destination[12:]
    if len(source) != len(destination):
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
    family = "TCP4" if len(source) == 4 else "TCP6"
    line = f"PROXY {family} {_text(source)} {_text(destination)} {sourcePort} {destinationPort}"
    return (line + "\r\n").encode("ascii")


def headerV2(peer: object, local: object, datagram: bool = False) -> bytes:
    """
    The binary header (transport C{STREAM}, or C{DGRAM} for a datagram
    session); a C{LOCAL} command without addresses for UNIX clients.
    """
    pair = _ipPair(peer, local)
    if pair is None:
        return V2_SIGNATURE + bytes((_V2_LOCAL, 0, 0, 0))
    source, sourcePort, destination, destinationPort = pair
    family = (_V2_TCP4 if len(source) == 4 else _V2_TCP6) + datagram
    body = source + destination + sourcePort.to_bytes(2, "big") + destinationPort.to_bytes(2, "big")
    return V2_SIGNATURE + bytes((_V2_PROXY, family)) + len(body).to_bytes(2, "big") + body


HEADERS = {"v1": headerV1, "v2": headerV2}
