# -*- test-case-name: tests.integration.test_datagram -*-
"""
L{Session}: one client of a datagram listener, with a socket of its own
connected to the target (see L{socketproxyd.datagram.relay}).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from socketproxyd.addresses import describeAddress, socketAddress
from socketproxyd.datagram.port import BATCH, receiveBuffer, receiveView
from socketproxyd.events import Ending, stillIdle
from socketproxyd.proxyheader import headerV2

if TYPE_CHECKING:
    from socketproxyd.datagram.packetinfo import Destination
    from socketproxyd.datagram.relay import DatagramRelay

_NONBLOCKING_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class Session:
    """
    One client of a datagram listener: its own socket connected to the
    target (on a UNIX target, bound to an automatic abstract address so
    the backend can answer), its counts, and when it last moved a datagram.

    @ivar counts: datagrams up, bytes up, datagrams down, bytes down.
    @ivar key: what the relay knows it by: the client's address, with the
        address it wrote to on a wildcard-bound listener.
    @ivar local: that address, if the listener is wildcard-bound.
    @ivar replyControl: the control message that makes replies leave from
        it.
    """

    __slots__ = (
        "relay", "client", "socket", "fileno", "counts", "started", "lastMoved", "timer",
        "ending", "header", "alternatives", "local", "replyControl", "key",
    )  # fmt: skip

    def __init__(
        self,
        relay: DatagramRelay,
        client: object,
        key: object,
        destination: Destination | None,
        addresses: list[tuple[int, object]],
    ) -> None:
        self.relay = relay
        self.client = client
        self.key = key
        self.local = self.replyControl = None
        if destination is not None:
            self.local, self.replyControl = destination
        self.alternatives = addresses[1:]
        self._connect(*addresses[0])
        self.counts = [0, 0, 0, 0]
        reactor = relay.reactor
        self.started = self.lastMoved = reactor.seconds()
        self.ending: Ending | None = None
        self.header = b""
        if relay.settings.proxyProtocol is not None:
            family = relay.port.socket.family
            local = self.local or relay.port.getHost()
            self.header = headerV2(socketAddress(family, client, "UDP"), local, datagram=True)
        relay.sessions[self.key] = self
        relay.tracker.connectionOpened(self)
        reactor.addReader(self)
        self.timer = reactor.callLater(relay.idleTimeout, self._idleCheck)

    def _connect(self, family: int, address: object) -> None:
        sock = socket.socket(family, _NONBLOCKING_DGRAM)
        try:
            if family == socket.AF_UNIX:
                sock.bind("")
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
        while self.alternatives and not self.counts[2]:
            reactor = self.relay.reactor
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

    @property
    def factory(self) -> DatagramRelay:
        return self.relay

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
            self.relay.dropped += 1
            return
        except ConnectionRefusedError:
            self._refused()
            return
        except OSError:
            self.relay.dropped += 1
            return
        counts = self.counts
        counts[0] += 1
        counts[1] += len(data)
        self.lastMoved = self.relay.reactor.seconds()

    def doRead(self) -> None:
        receive, relay = self.socket.recv_into, self.relay
        counts = self.counts
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
            if relay.port.sendTo(bytes(receiveView[:size]), self.client, self.replyControl):
                counts[2] += 1
                counts[3] += size
            else:
                relay.dropped += 1
        self.lastMoved = relay.reactor.seconds()

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
        relay = self.relay
        self.timer = stillIdle(relay.reactor, self.lastMoved + relay.idleTimeout, self._idleCheck)
        if self.timer is None:
            self.end(Ending.IDLE_TIMEOUT)

    def end(self, how: Ending, reset: bool = False) -> None:
        """
        Close the session's socket and free its slot.
        """
        if self.ending is not None:
            return
        self.ending = how
        relay = self.relay
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        relay.reactor.removeReader(self)
        self.socket.close()
        relay.sessions.pop(self.key, None)
        relay.tracker.connectionClosed(self)
        if relay.recordsAddresses:
            up, upBytes, down, downBytes = self.counts
            self.relay.log.debug(
                "{route}{listener} {client} -> {target}: {up} datagrams ({upBytes} bytes) up, "
                "{down} datagrams ({downBytes} bytes) down, {duration:.3f}s, {how}",
                route=relay.routePrefix,
                listener=describeAddress(self.local or relay.port.getHost()),
                client=relay.describe(self.client),
                target=str(relay.target),
                up=up,
                upBytes=upBytes,
                down=down,
                downBytes=downBytes,
                duration=relay.reactor.seconds() - self.started,
                how=how.value,
            )
