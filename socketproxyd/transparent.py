"""
C{--transparent}: sockets bound to an address that belongs to another host
(a client's), so that the target sees the client as if it had connected
directly.
"""

from __future__ import annotations

import socket

from socketproxyd.addresses import RawAddress

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)


def bindTransparent(sock: socket.socket, source: RawAddress) -> None:
    """
    Bind C{sock} to C{source}, which need not be one of this host's
    addresses (IP_TRANSPARENT / IPV6_TRANSPARENT, which the kernel allows
    with CAP_NET_ADMIN or CAP_NET_RAW).
    """
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind(source)


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
