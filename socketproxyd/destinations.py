# -*- test-case-name: tests.test_datagram -*-
"""
Which address a datagram on a wildcard-bound socket was sent to, and the
control message that makes a reply leave from that address.

A datagram socket bound to C{0.0.0.0} or C{::} (C{ListenDatagram=53}) takes
datagrams for every address of the host, but a reply sent on it with
C{sendto} leaves from whichever address the routing table picks: a client
that wrote to 127.0.0.2, or to a host's second address, gets its answer
from another and drops it (C{dig}: "reply from unexpected source"). With
C{IP_PKTINFO}/C{IPV6_RECVPKTINFO} the kernel says each datagram's
destination, and the same control message on C{sendmsg} sets the reply's
source; the PROXY header gets the real destination too.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from twisted.internet.interfaces import IAddress

from .addresses import socketAddress

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
CONTROL_SPACE = socket.CMSG_SPACE(struct.calcsize("=16sI")) + socket.CMSG_SPACE(
    struct.calcsize("=i4s4s")
)
_NO_ADDRESS = bytes(4)


class Destination(NamedTuple):
    """
    The address a client wrote to (for the PROXY header and log lines),
    and the control messages that make a reply leave from it.
    """

    address: IAddress
    control: list[tuple[int, int, bytes]]


def receiveDestinations(sock: socket.socket) -> bool:
    """
    Ask the kernel for each datagram's destination when C{sock} is bound
    to a wildcard address (a bound address is its own answer); whether it
    now gives them.
    """
    try:
        host = sock.getsockname()[0]
        if sock.family == socket.AF_INET and host == "0.0.0.0":
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            return True
        if sock.family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            return True
    except OSError:
        pass
    return False


def destinationOf(port: int, ancillary: list) -> Destination | None:
    """
    The destination C{recvmsg} reported in C{ancillary} for a datagram to
    C{port}, or L{None} when it reported none.
    """
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            _, _, destination = struct.unpack_from("=i4s4s", data)
            host = socket.inet_ntop(socket.AF_INET, destination)
            control = struct.pack("=i4s4s", 0, destination, _NO_ADDRESS)
            address = socketAddress(socket.AF_INET, (host, port), "UDP")
            return Destination(address, [(level, kind, control)])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            host = socket.inet_ntop(socket.AF_INET6, data[:16])
            address = socketAddress(socket.AF_INET6, (host, port, 0, 0), "UDP")
            return Destination(address, [(level, kind, bytes(data[:20]))])
    return None
