# -*- test-case-name: tests.integration.test_activation_sockets -*-
"""
The sd_listen_fds protocol: find the listening sockets a launcher passed in,
check they are what the proxy can serve (listening stream sockets, and
datagram sockets), and adopt them.

Twisted's own L{twisted.python.systemd.ListenFDs} is not enough here: it
returns nothing when C{LISTEN_FDNAMES} is missing (as with
C{systemd-socket-activate} without C{--fdname}), and importing
L{twisted.internet.endpoints} deletes C{LISTEN_PID} and C{LISTEN_FDS} from
C{os.environ} before any plugin code runs. The process's initial environment,
as the kernel keeps it in C{/proc/self/environ}, is unaffected by that, so it
is read when C{os.environ} has lost the variables.

Reading the sockets needs no Twisted, and of the standard library only
modules built into the interpreter (C{_socket}, the socket module's core:
the socket module itself costs 7 ms to import, a third of the first
client's wait), because the early relay (L{socketproxyd.stream.earlyrelay})
reads them as the process starts.
"""

from __future__ import annotations

import _socket
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping, MutableMapping
    from typing import Any

    from twisted.internet.interfaces import IListeningPort, IReactorSocket
    from twisted.internet.protocol import ServerFactory

LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_FAMILIES = {
    _socket.AF_INET: "IPv4",
    _socket.AF_INET6: "IPv6",
    _socket.AF_UNIX: "UNIX",
}
HOW_TO_PASS = (
    "pass listening sockets by socket activation (a systemd .socket unit, or "
    "systemd-socket-activate -l ADDRESS) or give --listen=ENDPOINT"
)
"""
What an error about missing or unusable sockets tells the operator to do.
"""


class ActivationError(Exception):
    """
    The inherited sockets cannot be used; the message says why and what to do.
    """


class InheritedSocket:
    """
    One listening socket passed in by the launcher.
    """

    __slots__ = ("fd", "family", "name", "datagram")

    def __init__(self, fd: int, family: int, name: str, datagram: bool = False) -> None:
        self.fd = fd
        self.family = family
        self.name = name
        self.datagram = datagram

    def _key(self) -> tuple[int, int, str, bool]:
        return self.fd, self.family, self.name, self.datagram

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InheritedSocket):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"InheritedSocket(fd={self.fd}, family={self.family!r}, "
            f"name={self.name!r}, datagram={self.datagram})"
        )

    def describe(self) -> str:
        """
        How the socket is named in log lines: its fd, name (unless it has
        none: C{unknown}, as systemd says without C{LISTEN_FDNAMES}) and
        family.
        """
        kind = " datagram" if self.datagram else ""
        named = f"{self.name}, " if self.name != "unknown" else ""
        return f"fd {self.fd} ({named}{_FAMILIES[self.family]}{kind})"


def initialEnvironment() -> dict[str, str]:
    """
    The environment this process was started with, read from
    C{/proc/self/environ}; empty where that cannot be read.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    result = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            result[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return result


def _activationVariables(
    environ: Mapping[str, str], initial: Callable[[], Mapping[str, str]]
) -> Mapping[str, str]:
    if "LISTEN_PID" in environ or "LISTEN_FDS" in environ:
        return environ
    return initial()


def _familyName(family: int) -> str:
    """
    How the socket module names C{family}.
    """
    import socket

    try:
        return repr(socket.AddressFamily(family))
    except ValueError:
        return str(family)


def _listeningFamily(fd: int, name: str) -> tuple[int, bool]:
    """
    The address family of C{fd}, and whether it is a datagram socket, if
    it is a listening stream socket or a datagram socket we can serve.

    @raise ActivationError: naming the fd and what it is instead.
    """

    def unusable(what: str) -> ActivationError:
        return ActivationError(f"inherited fd {fd} ({name}) {what}")

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise unusable("is not open") from None
    if not stat.S_ISSOCK(mode):
        kinds = [
            (stat.S_ISREG, "a regular file"),
            (stat.S_ISDIR, "a directory"),
            (stat.S_ISFIFO, "a pipe"),
            (stat.S_ISCHR, "a character device"),
        ]
        kind = next((what for test, what in kinds if test(mode)), "something else")
        raise unusable(f"is {kind}, not a socket")
    try:
        sock = _socket.socket(fileno=os.dup(fd))
    except OSError as e:
        raise unusable(f"cannot be used as a socket: {e.strerror}") from None
    try:
        if sock.family not in _FAMILIES:
            raise unusable(f"is a socket of unsupported family {_familyName(sock.family)}")
        if sock.type == _socket.SOCK_DGRAM:
            return sock.family, True
        if sock.type != _socket.SOCK_STREAM:
            names = {_socket.SOCK_SEQPACKET: "seqpacket"}
            raise unusable(
                f"is a {names.get(sock.type, str(sock.type))} socket, "
                f"not a stream or datagram socket"
            )
        if not sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
            raise unusable(
                "is a stream socket that is not listening "
                "(Accept=yes and --accept are not supported)"
            )
        return sock.family, False
    finally:
        sock.close()


def inheritedSockets(
    environ: MutableMapping[str, str] = os.environ,
    pid: int | None = None,
    initial: Callable[[], Mapping[str, str]] = initialEnvironment,
    start: int = LISTEN_FDS_START,
) -> list[InheritedSocket]:
    """
    Read, validate and consume the C{LISTEN_*} variables.

    The variables are removed from C{environ} and the fds made close-on-exec,
    so nothing started later inherits them.

    @return: the inherited listening sockets, in fd order; empty when the
        process was not socket-activated.
    @raise ActivationError: when variables or fds are unusable.
    """
    pid = os.getpid() if pid is None else pid
    variables = dict(_activationVariables(environ, initial))
    for name in _VARIABLES:
        environ.pop(name, None)
    if "LISTEN_PID" not in variables and "LISTEN_FDS" not in variables:
        return []
    listenPid = variables.get("LISTEN_PID", "").strip()
    if not listenPid.isdigit():
        raise ActivationError(f"LISTEN_PID={listenPid!r} is not a process id; {HOW_TO_PASS}")
    if int(listenPid) != pid:
        raise ActivationError(
            f"the inherited sockets are for process {listenPid}, not this one "
            f"({pid}): exec the proxy directly from the launcher, not in a "
            f"child process"
        )
    count = variables.get("LISTEN_FDS", "").strip()
    if not count.isdigit() or int(count) < 1:
        raise ActivationError(f"LISTEN_FDS={count!r} is not a count of sockets (1 or more)")
    fds = range(start, start + int(count))
    names: list[str] = ["unknown"] * len(fds)
    if variables.get("LISTEN_FDNAMES"):
        names = variables["LISTEN_FDNAMES"].split(":")
        if len(names) != len(fds):
            raise ActivationError(
                f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS={count}"
            )
    result = []
    for fd, name in zip(fds, names, strict=True):
        family, datagram = _listeningFamily(fd, name)
        os.set_inheritable(fd, False)
        result.append(InheritedSocket(fd, family, name, datagram))
    return result


def takeDatagramSocket(inherited: InheritedSocket) -> socket.socket:
    """
    The inherited datagram socket as a socket object, which owns its fd.
    """
    import socket

    return socket.socket(inherited.family, socket.SOCK_DGRAM, fileno=inherited.fd)


def adopt(
    reactor: IReactorSocket, inherited: InheritedSocket, factory: ServerFactory[Any]
) -> IListeningPort:
    """
    Start accepting on an inherited socket with C{reactor.adoptStreamPort}.

    The reactor keeps its own duplicate, so the inherited fd is closed.
    """
    import socket

    os.set_blocking(inherited.fd, False)
    try:
        family = socket.AddressFamily(inherited.family)
        return reactor.adoptStreamPort(inherited.fd, family, factory)
    finally:
        os.close(inherited.fd)
