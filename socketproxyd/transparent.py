"""
C{--transparent}: sockets bound to an address that belongs to another host
(a client's), so that the target sees the client as if it had connected
directly.
"""

from __future__ import annotations

import errno
import socket

from twisted.logger import Logger

from socketproxyd.addresses import RawAddress
from socketproxyd.logs import observer

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
log = Logger(namespace="socketproxyd.transparent", observer=observer)


def bindTransparent(sock: socket.socket, source: RawAddress) -> None:
    """
    Bind C{sock} to C{source}, which need not be one of this host's
    addresses (IP_TRANSPARENT / IPV6_TRANSPARENT, which the kernel allows
    with CAP_NET_ADMIN or CAP_NET_RAW). Where that address and port are
    taken on this host (a client on the proxy's own host, whose socket
    holds them, or a port in TIME_WAIT), C{sock} is bound to the address
    alone, its port chosen by the kernel (for a stream, at the connect:
    IP_BIND_ADDRESS_NO_PORT).
    """
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    try:
        sock.bind(source)
    except OSError as e:
        if e.errno != errno.EADDRINUSE or not source[1]:
            raise
        if sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source[0], 0, *source[2:]))
        log.debug(
            "Port {port} of {host} is taken on this host: connecting from {host} with another port",
            host=source[0],
            port=source[1],
        )


def mayBindTransparent() -> bool:
    """
    Whether this process may bind transparent sockets (probed on one).
    """
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        except OSError:  # EPERM without the capability; ENOPROTOOPT where there is none
            return False
    return True
