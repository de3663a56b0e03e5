# -*- test-case-name: tests.integration.test_datagram -*-
"""
L{Session}: one client of a datagram listener, with a socket of its own
connected to the target (see L{socketproxyd.datagram.relay}).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IDelayedCall, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from socketproxyd.addresses import RawAddress, SocketAddress, socketAddress
from socketproxyd.datagram.port import BATCH, receiveBuffer, receiveView
from socketproxyd.events import DOWNSTREAM, UPSTREAM, Ending, cancelled, stillIdle
from socketproxyd.proxyheader import headerV2
from socketproxyd.transparent import bindTransparent

if TYPE_CHECKING:
    from socketproxyd.datagram.packetinfo import Control, Destination
    from socketproxyd.datagram.relay import DatagramRelay

_NONBLOCKING_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


@implementer(IReadDescriptor)
class Session:
    """
    One client of a datagram listener: its own socket connected to the
    target (on a UNIX target, bound to an automatic abstract address so
    the backend can answer; with C{--transparent}, bound to the client's
    own address), its counts, and when it last moved a datagram.

    @ivar counts: bytes moved, indexed by direction.
    @ivar datagrams: datagrams moved, indexed by direction.
    @ivar key: what the relay knows it by: the client's address, with the
        address it wrote to on a wildcard-bound listener.
    @ivar local: that address, if the listener is wildcard-bound.
    @ivar replyControl: the control message that makes replies leave from
        it.
    """

    connected = 0.0

    __slots__ = (
        "server", "client", "socket", "fileno", "counts", "datagrams", "started",
        "lastMoved", "timer",
        "ending", "header", "alternatives", "local", "replyControl", "key",
    )  # fmt: skip

    def __init__(
        self,
        server: DatagramRelay,
        client: RawAddress,
        key: object,
        destination: Destination | None,
        addresses: list[SocketAddress],
    ) -> None:
        self.server = server
        self.client = client
        self.key = key
        self.local: IAddress | None = None
        self.replyControl: Control | None = None
        if destination is not None:
            self.local, self.replyControl = destination
        self.alternatives = addresses[1:]
        self._connect(*addresses[0])
        self.counts = [0, 0]
        self.datagrams = [0, 0]
        reactor = server.reactor
        self.started = self.lastMoved = reactor.seconds()
        self.ending: Ending | None = None
        self.header = b""
        if server.settings.proxyProtocol is not None:
            family = server.port.socket.family
            local = self.local or server.port.getHost()
            self.header = headerV2(socketAddress(family, client, "UDP"), local, datagram=True)
        server.sessions[self.key] = self
        server.tracker.opened(self)
        reactor.addReader(self)
        self.timer: IDelayedCall | None = reactor.callLater(server.idleTimeout, self._idleCheck)

    def _connect(self, family: int, address: RawAddress) -> None:
        sock = socket.socket(family, _NONBLOCKING_DGRAM)
        try:
            if family == socket.AF_UNIX:
                sock.bind("")
            elif self.server.settings.transparent:
                source = self.server.transparentSource(family, self.client)
                if source is not None:
                    bindTransparent(sock, source)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self.socket = sock
        self.fileno = sock.fileno

    def _refused(self) -> None:
        """
        The target refused (ICMP port unreachable): a named target's next
        address is tried while none has answered, as for streams; else the
        session ends.
        """
        while self.alternatives and not self.datagrams[DOWNSTREAM]:
            reactor = self.server.reactor
            reactor.removeReader(self)
            old = self.socket
            try:
                self._connect(*self.alternatives.pop(0))
            except OSError:
                continue
            old.close()
            reactor.addReader(self)
            return
        self.end(Ending.REFUSED)

    def logPrefix(self) -> str:
        return "session"

    def send(self, data: bytes) -> None:
        """
        Forward a client's datagram to the target, or drop it if it cannot
        go at once.
        """
        try:
            self.socket.send(self.header + data if self.header else data)
        except BlockingIOError:
            self.server.drops["upstream_failed"] += 1
            return
        except ConnectionRefusedError:
            self._refused()
            return
        except OSError:
            self.server.drops["upstream_failed"] += 1
            return
        self.datagrams[UPSTREAM] += 1
        self.counts[UPSTREAM] += len(data)
        self.lastMoved = self.server.reactor.seconds()

    def doRead(self) -> None:
        receive, server = self.socket.recv_into, self.server
        counts, datagrams = self.counts, self.datagrams
        for _ in range(BATCH):
            try:
                size = receive(receiveBuffer)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                self._refused()
                return
            except OSError:
                self.end(Ending.RESET)
                return
            if server.port.sendTo(bytes(receiveView[:size]), self.client, self.replyControl):
                datagrams[DOWNSTREAM] += 1
                counts[DOWNSTREAM] += size
            else:
                server.drops["downstream_failed"] += 1
        self.lastMoved = server.reactor.seconds()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw an error on the socket: an ICMP port unreachable
        from the target is a refusal.
        """
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.ECONNREFUSED:
            self._refused()
        else:
            self.end(Ending.RESET)

    def _idleCheck(self) -> None:
        server = self.server
        self.timer = stillIdle(server.reactor, self.lastMoved + server.idleTimeout, self._idleCheck)
        if self.timer is None:
            self.end(Ending.IDLE_TIMEOUT)

    def shutdown(self) -> None:
        """
        The proxy stops: end the session now.
        """
        self.end(Ending.SHUTDOWN)

    def addresses(self) -> tuple[IAddress, IAddress] | None:
        """
        The address the client wrote to and the client's, when the route
        records them.
        """
        server = self.server
        if not server.recordsAddresses:
            return None
        peer = socketAddress(server.port.socket.family, self.client, "UDP")
        return self.local or server.port.getHost(), peer

    def end(self, how: Ending) -> None:
        """
        Close the session's socket and free its slot.
        """
        if self.ending is not None:
            return
        self.ending = how
        server = self.server
        cancelled(self.timer)
        self.timer = None
        server.reactor.removeReader(self)
        self.socket.close()
        server.sessions.pop(self.key, None)
        server.tracker.closed(self)
