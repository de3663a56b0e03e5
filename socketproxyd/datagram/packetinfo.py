# -*- test-case-name: tests.unit.test_wildcard_destination -*-
"""
Which address a datagram on a wildcard-bound socket was sent to, and the
control message that makes a reply leave from the right address.

A datagram socket bound to C{0.0.0.0} or C{::} (C{ListenDatagram=53}) takes
datagrams for every address of the host, but a reply sent on it with
C{sendto} leaves from whichever address the routing table picks: a client
that wrote to 127.0.0.2, or to a host's second address, gets its answer
from another and drops it (C{dig}: "reply from unexpected source"). With
C{IP_PKTINFO}/C{IPV6_RECVPKTINFO} the kernel says each datagram's
destination; a reply's source is then set with C{sendmsg} (for IPv4 the
kernel's C{ipi_spec_dst}, the local address, which is also right for a
broadcast; for IPv6 the destination itself, unless it was multicast, when
routing chooses). The output interface is left to routing. The PROXY
header gets the real destination.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from twisted.internet.interfaces import IAddress

from socketproxyd.addresses import socketAddress

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
CONTROL_SPACE = 256
"""
Room for the control messages of one datagram: both kinds of packet
information, and the timestamps a socket unit may have asked for.
"""
_NO_ADDRESS = bytes(4)
_NO_INTERFACE = bytes(4)
Control = list[tuple[int, int, bytes]]


class Destination(NamedTuple):
    """
    The address a client wrote to (for the PROXY header), and the control
    messages that make a reply leave from the right address (L{None}:
    let routing choose).
    """

    address: IAddress
    control: Control | None


def receiveDestinations(sock: socket.socket) -> bool:
    """
    Ask the kernel for each datagram's destination when C{sock} is bound
    to a wildcard address (a bound address is its own answer); whether it
    now gives them. A dual-stack IPv6 socket gets both kinds: IPv4's says
    the local address to answer a broadcast from.
    """
    try:
        if sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0":
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            return True
        if sock.family == socket.AF_INET6 and sock.getsockname()[0] == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            except OSError:
                pass
            return True
    except OSError:
        pass
    return False


def _packetInfo(ancillary: Control) -> tuple[bytes | None, bytes | None]:
    ipv4 = ipv6 = None
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            ipv4 = data
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            ipv6 = data
    return ipv4, ipv6


def destinationKey(ancillary: Control) -> bytes | None:
    """
    The destination address (packed) C{recvmsg} reported in C{ancillary},
    cheaply, for telling a client's sessions apart; L{None} when it
    reported none.
    """
    ipv4, ipv6 = _packetInfo(ancillary)
    if ipv4 is not None:
        return ipv4[8:12]
    if ipv6 is not None:
        return ipv6[:16]
    return None


def _unicast(destination: bytes) -> bytes | None:
    """
    The local address to answer from when the kernel did not note one: a
    datagram queued before C{IP_PKTINFO} was set, such as the one that
    started a socket-activated proxy, has only its destination, which is
    the answer unless it was multicast or the limited broadcast.
    """
    if destination[0] >= 224 or destination == b"\xff\xff\xff\xff":
        return None
    return destination


def destinationOf(family: int, port: int, ancillary: Control) -> Destination | None:
    """
    The destination C{recvmsg} reported in C{ancillary} for a datagram to
    C{port} on a socket of C{family}, or L{None} when it reported none.
    """
    ipv4, ipv6 = _packetInfo(ancillary)
    if ipv4 is not None:
        _, local, destination = struct.unpack_from("=i4s4s", ipv4)
        host = socket.inet_ntop(socket.AF_INET, destination)
        if family == socket.AF_INET6:
            address = socketAddress(family, (f"::ffff:{host}", port, 0, 0), "UDP")
        else:
            address = socketAddress(family, (host, port), "UDP")
        if local == _NO_ADDRESS:
            local = _unicast(destination)
        if local is None:
            return Destination(address, None)
        control = struct.pack("=i4s4s", 0, local, _NO_ADDRESS)
        return Destination(address, [(socket.IPPROTO_IP, IP_PKTINFO, control)])
    if ipv6 is not None:
        destination = bytes(ipv6[:16])
        host = socket.inet_ntop(socket.AF_INET6, destination)
        address = socketAddress(socket.AF_INET6, (host, port, 0, 0), "UDP")
        if destination[0] == 0xFF:
            return Destination(address, None)
        return Destination(
            address, [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, destination + _NO_INTERFACE)]
        )
    return None
