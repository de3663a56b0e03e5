# -*- test-case-name: tests.unit.test_addresses -*-
"""
Addresses as the proxy shows them in log lines and builds them for the
PROXY header.
"""

from __future__ import annotations

import socket
from typing import Any, Literal, TypeAlias

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

RawAddress: TypeAlias = "str | tuple[Any, ...]"
"""
An address as the socket module takes and gives it: a path, or a
C{(host, port)} or C{(host, port, flowinfo, scope)} tuple.
"""

SocketAddress: TypeAlias = "tuple[int, RawAddress]"
"""
A socket family and an address of it, as C{socket.connect} takes it.
"""


def describeAddress(address: IAddress | None) -> str:
    """
    An address as the log lines show it: C{host:port}, C{[v6]:port} or a path.
    """
    host = getattr(address, "host", None)
    if host is not None:
        port = getattr(address, "port", None)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if not name:
        return "unix:(unnamed)"
    return "@" + name[1:] if name.startswith("\0") else name


def socketAddress(family: int, address: Any, kind: Literal["TCP", "UDP"] = "TCP") -> IAddress:
    """
    A socket address as Twisted's address objects give it (C{kind} C{"TCP"}
    or C{"UDP"}), for the PROXY header and log lines.
    """
    if family == socket.AF_INET:
        return IPv4Address(kind, address[0], address[1])
    if family == socket.AF_INET6:
        return IPv6Address(kind, address[0], address[1], address[2], address[3])
    return UNIXAddress(address or None)


def hostAddress(host: str, port: int) -> IAddress:
    """
    An IP address and port (from a PROXY header) as Twisted's address
    objects give it.
    """
    return socketAddress(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port, 0, 0))
