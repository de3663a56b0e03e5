# -*- test-case-name: tests.unit.test_target -*-
"""
The TARGET argument: its grammar, its validation at start-up, its socket
address, the client endpoint that reaches it, and which failures to reach it mean it is not
ready yet.

The grammar and the socket address need only the standard library, so the
early relay (L{socketproxyd.stream.earlyrelay}) parses TARGET with them
before Twisted is imported; Twisted's endpoints are imported when one is
built.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamClientEndpoint

    from socketproxyd.addresses import SocketAddress

DEFAULT_PORT = 80
NOT_READY = (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN)
_SUN_PATH_MAX = 107
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$"
)


@dataclass(frozen=True)
class Target:
    """
    Where every client connection is forwarded to.

    @ivar kind: C{"unix"}, C{"ipv4"}, C{"ipv6"} or C{"name"}.
    @ivar host: the address, name or UNIX path (abstract names start
        with a NUL byte).
    @ivar port: the TCP port, L{None} for UNIX targets.
    """

    kind: str
    host: str
    port: int | None = None

    def endpoint(self, reactor: object, timeout: float) -> IStreamClientEndpoint:
        """
        A client endpoint for this target; one is enough for every connection.

        Literal addresses skip the resolver, and their single attempt is
        bounded by C{timeout}; names go through the reactor's resolver and
        every address they resolve to is tried, each bounded by C{timeout}
        (the connection's own connect timer bounds them all).
        """
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            UNIXClientEndpoint,
        )

        # Twisted's connectors read a timeout of None as "none of mine"
        # (the kernel's own), though the endpoints' hints say float.
        attemptTimeout = cast(float, None) if math.isinf(timeout) else timeout
        if self.kind == "unix":
            return UNIXClientEndpoint(reactor, self.host, timeout=attemptTimeout)
        assert self.port is not None
        if self.kind == "ipv4":
            return TCP4ClientEndpoint(reactor, self.host, self.port, attemptTimeout)
        if self.kind == "ipv6":
            return TCP6ClientEndpoint(reactor, self.host, self.port, attemptTimeout)
        return HostnameEndpoint(reactor, self.host, self.port, attemptTimeout)

    def socketAddress(self, kind: int) -> SocketAddress:
        """
        The family and socket module address of a literal target, for a
        socket of C{kind} (an IPv6 scope such as C{%eth0} becomes its
        interface index).

        @raise ValueError: for a name, or an address the system cannot use.
        """
        if self.kind == "name":
            raise ValueError(f"{self} is a name, not an address")
        if self.kind == "unix":
            return socket.AF_UNIX, self.host
        family = socket.AF_INET if self.kind == "ipv4" else socket.AF_INET6
        try:
            [(*_, address)] = socket.getaddrinfo(
                self.host, self.port, family, kind, 0, socket.AI_NUMERICHOST
            )
        except OSError as e:
            raise ValueError(f"{self}: {e.strerror}") from None
        return family, address

    def __str__(self) -> str:
        if self.kind == "unix":
            return "@" + self.host[1:] if self.host.startswith("\0") else self.host
        if self.kind == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _parsePort(text: str, target: str) -> int:
    if text.isdigit():
        port = int(text)
        if 1 <= port <= 65535:
            return port
        raise ValueError(f"port {text} in target {target!r} is not in 1-65535")
    if not text:
        raise ValueError(f"target {target!r} has an empty port")
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError(
            f"port {text!r} in target {target!r} is neither a number nor a known TCP service name"
        ) from None


def _unixTarget(text: str) -> Target:
    if text.startswith("@"):
        address = "\0" + text[1:]
        if len(text) == 1:
            raise ValueError("abstract UNIX target '@' has no name")
    else:
        address = text
    if "\0" in text:
        raise ValueError("UNIX target contains a NUL byte")
    if len(address.encode("utf-8")) > _SUN_PATH_MAX:
        raise ValueError(f"UNIX socket path {text!r} is longer than {_SUN_PATH_MAX} bytes")
    return Target("unix", address)


def _hostTarget(host: str, port: int, target: str) -> Target:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return Target("ipv6" if address.version == 6 else "ipv4", host, port)
    if ":" in host or not _HOSTNAME.match(host):
        raise ValueError(f"{host!r} in target {target!r} is not a host name or address")
    return Target("name", host, port)


def parseTarget(text: str) -> Target:
    """
    Parse TARGET: C{/path}, C{@abstract}, C{[v6]:port}, C{[v6]},
    C{host:port}, C{host}, or C{v6:port} split at the last colon as the
    original does. The port defaults to 80.

    @raise ValueError: with a one-line reason when the target can never work.
    """
    if text.startswith(("/", "@")):
        return _unixTarget(text)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(
                f"target {text!r} has '[' without ']': write an IPv6 target as "
                "[ADDRESS]:PORT, e.g. [::1]:8080"
            )
        host, rest = text[1:close], text[close + 1 :]
        try:
            if ipaddress.ip_address(host.split("%", 1)[0]).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{host!r} in target {text!r} is not an IPv6 address") from None
        if rest == "":
            return Target("ipv6", host, DEFAULT_PORT)
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in target {text!r}")
        return Target("ipv6", host, _parsePort(rest[1:], text))
    if not text:
        raise ValueError("target is empty")
    if ":" not in text:
        return _hostTarget(text, DEFAULT_PORT, text)
    host, _, port = text.rpartition(":")
    if not host:
        raise ValueError(f"target {text!r} has an empty host")
    return _hostTarget(host, _parsePort(port, text), text)


def notReady(reason: BaseException) -> bool:
    """
    Whether a connect failed because the target is not ready yet: it
    refuses, its UNIX socket does not exist yet, or its backlog is full.
    """
    from twisted.internet import error

    return isinstance(reason, error.ConnectionRefusedError) or (
        isinstance(reason, error.ConnectError) and reason.osError in NOT_READY
    )
