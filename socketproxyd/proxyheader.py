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


def hostPort(address: object) -> tuple[str, int] | None:
    """
    The IP host and port of C{address} (a Twisted address or the socket
    module's tuple), if it is an IP address.
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
    peerPair, localPair = hostPort(peer), hostPort(local)
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


V1_MAX = 107
"""
The longest a version 1 header can be, its CRLF included (the spec's).
"""

MAX_HEADER = 536
"""
The longest header accepted, of either version: the spec sizes headers to
fit a minimal TCP segment of 536 bytes (16 bytes and 520 of addresses and
TLVs for version 2).
"""

_V1_PREFIX = b"PROXY "
_V1_FAMILIES = {b"TCP4": _socket.AF_INET, b"TCP6": _socket.AF_INET6}
_V2_FAMILIES = {0x1: (_socket.AF_INET, 4), 0x2: (_socket.AF_INET6, 16)}


class HeaderError(ValueError):
    """
    The bytes are not a PROXY header this proxy accepts; the message says
    why, in a few words.
    """


class ReceivedHeader:
    """
    A complete PROXY header a client sent.

    @ivar length: how many bytes it took.
    @ivar source: the original client's C{(host, port)}, or C{None} when
        the header carries no addresses to use (a v2 C{LOCAL} command, a
        v1 C{UNKNOWN}): the socket's own are used then.
    @ivar destination: the address the original client connected to,
        likewise.
    """

    __slots__ = ("length", "source", "destination")

    def __init__(
        self,
        length: int,
        source: tuple[str, int] | None = None,
        destination: tuple[str, int] | None = None,
    ) -> None:
        self.length = length
        self.source = source
        self.destination = destination

    def __repr__(self) -> str:
        return f"ReceivedHeader({self.length}, {self.source}, {self.destination})"


def parseHeader(data: bytes) -> ReceivedHeader | int:
    """
    Read the PROXY header (version 1 or 2) at the start of C{data}: the
    header once C{data} holds all of it, else how many bytes C{data} must
    hold at least before it can be complete. Only what the header's own
    length (or, for version 1, its CRLF) says is looked at.

    @raise HeaderError: when C{data} cannot begin a header accepted here:
        no signature, an unknown version, command, family or protocol,
        addresses that are not IP addresses of the family given, a length
        over L{MAX_HEADER}, a version 1 line without CRLF within
        L{V1_MAX} bytes.
    """
    if data.startswith(V2_SIGNATURE[: len(data)]) and data[:1] == b"\r":
        return _parseV2(data)
    if data.startswith(_V1_PREFIX[: len(data)]) and data:
        return _parseV1(data)
    if not data:
        return 1
    raise HeaderError("not a PROXY header")


def _parseV1(data: bytes) -> ReceivedHeader | int:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise HeaderError(f"no CRLF within {V1_MAX} bytes")
        return len(data) + 1
    fields = data[:end].split(b" ")
    if fields[:2] == [b"PROXY", b"UNKNOWN"]:
        return ReceivedHeader(end + 2)
    if len(fields) != 6 or fields[1] not in _V1_FAMILIES:
        raise HeaderError("a malformed version 1 line")
    family = _V1_FAMILIES[fields[1]]
    source = _v1Address(family, fields[2], fields[4])
    destination = _v1Address(family, fields[3], fields[5])
    return ReceivedHeader(end + 2, source, destination)


def _v1Address(family: int, host: bytes, port: bytes) -> tuple[str, int]:
    try:
        text = host.decode("ascii")
        _socket.inet_pton(family, text)
    except (UnicodeDecodeError, OSError, ValueError):
        raise HeaderError("a malformed version 1 address") from None
    if not port.isdigit() or (port.startswith(b"0") and port != b"0") or int(port) > 65535:
        raise HeaderError("a malformed version 1 port")
    return text, int(port)


def _parseV2(data: bytes) -> ReceivedHeader | int:
    if len(data) < 16:
        return 16
    versionCommand, familyProtocol = data[12], data[13]
    if versionCommand >> 4 != 2:
        raise HeaderError(f"unknown version {versionCommand >> 4}")
    command = versionCommand & 0xF
    if command > 1:
        raise HeaderError(f"unknown command {command}")
    length = 16 + int.from_bytes(data[14:16], "big")
    if length > MAX_HEADER:
        raise HeaderError(f"{length} bytes, more than {MAX_HEADER}")
    if len(data) < length:
        return length
    if command == 0:
        return ReceivedHeader(length)
    family, protocol = familyProtocol >> 4, familyProtocol & 0xF
    if family not in _V2_FAMILIES:
        names = {0: "unspecified", 3: "UNIX"}
        raise HeaderError(f"{names.get(family, 'unknown')} address family {family}")
    if protocol != 1:
        raise HeaderError(f"transport protocol {protocol}, not STREAM")
    socketFamily, size = _V2_FAMILIES[family]
    if length < 16 + 2 * size + 4:
        raise HeaderError("addresses shorter than their family's")
    body = data[16:length]
    ports = body[2 * size : 2 * size + 4]
    source = _socket.inet_ntop(socketFamily, body[:size])
    destination = _socket.inet_ntop(socketFamily, body[size : 2 * size])
    return ReceivedHeader(
        length,
        (source, int.from_bytes(ports[:2], "big")),
        (destination, int.from_bytes(ports[2:], "big")),
    )
