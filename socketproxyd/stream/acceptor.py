# -*- test-case-name: tests.integration.test_acceptor -*-
"""
Accepting clients: the proxy's own accept loop on the listening sockets
Twisted adopted or bound for it.

Twisted's ports accept for their factory in C{Port.doRead}, which cannot
keep the contract: it accepts up to C{numberAccepts} clients a wake-up
whatever the connection limit, on C{EMFILE} it accepts pending clients
only to close them (its reserved-descriptor recovery), and on C{ENFILE}
it logs on every wake-up of a busy loop. So once a plain TCP or UNIX port
is open, an L{Acceptor} takes its place in the reactor (public
C{IReactorFDSet} calls on the port's public C{socket}): it accepts no
more clients than there is room for, and when the process or the system
is out of descriptors it stops accepting and says so to its
L{socketproxyd.events.Admission}, leaving the clients in the kernel's
backlog. The port keeps owning its
socket: its address, and C{stopListening} to close it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeGuard

from twisted.internet.interfaces import IListeningPort, IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from socketproxyd.events import Admission
from socketproxyd.logs import observer

if TYPE_CHECKING:
    from twisted.internet import tcp

OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
"""
The accept errors that mean the process or the system has no room for
another socket now.
"""

_CLIENT_GONE = frozenset((errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.EINTR))
"""
The accept errors of one client that gave up (or that a firewall
refused) before it was accepted: go on with the next.
"""


def adoptable(port: IListeningPort, factory: object) -> TypeGuard[tcp.Port]:
    """
    Whether an L{Acceptor} can accept for C{port}: a plain TCP or UNIX
    port serving C{factory} itself (a TLS port wraps the factory, and its
    clients must go through Twisted's transports).
    """
    from twisted.internet import tcp, unix

    return type(port) in (tcp.Port, unix.Port) and getattr(port, "factory", None) is factory


@implementer(IReadDescriptor)
class Acceptor:
    """
    Accepts clients on one listening port and hands each, non-blocking, to
    C{accepted} (see the module docstring).
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: IReactorFDSet,
        port: tcp.Port,
        admission: Admission,
        accepted: Callable[[socket.socket, object], None],
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.socket: socket.socket = port.socket
        self.fd = self.socket.fileno()
        self.admission = admission
        self.accepted = accepted
        port.stopReading()

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "accept"

    def startReading(self) -> None:
        """
        Accept clients as they come.
        """
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        """
        Leave clients in the backlog.
        """
        self.reactor.removeReader(self)

    def doRead(self) -> None:
        room = self.admission.room()
        if room < 1:
            self.admission.fdsExhausted()
            return
        listener = self.socket
        for _ in range(room):
            try:
                client, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in OUT_OF_DESCRIPTORS:
                    self.admission.fdsExhausted()
                    return
                if e.errno in _CLIENT_GONE:
                    continue
                self.log.failure("Accepting on {fd} failed", fd=self.fd)
                return
            try:
                client.setblocking(False)
                self.accepted(client, address)
            except OSError as e:
                client.close()
                if e.errno in OUT_OF_DESCRIPTORS:
                    self.admission.fdsExhausted()
                    return

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw an error on the listening socket; the port, which
        owns it, is closed when the proxy stops.
        """
        self.log.warn("Listening socket {fd} failed: {reason}", fd=self.fd, reason=reason.value)
