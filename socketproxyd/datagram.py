# -*- test-case-name: tests.test_datagram -*-
"""
Datagram forwarding (C{ListenDatagram=} sockets and C{--listen=udp:...}).

Each client address gets a L{Session}: a socket of its own connected to the
target, so the backend sees one peer per client and its replies come back
on that socket; they are sent to the client from the listening socket, the
address it wrote to. A datagram is never split, merged or reordered. There
is no flow control for datagrams: one that cannot be sent at once is
dropped and counted, never queued, so memory stays bounded under a flood.

The listening socket is read by a L{DatagramPort} of the proxy's own, not
by a Twisted UDP port: Twisted adopts no UNIX datagram socket
(C{adoptDatagramPort} takes IPv4 and IPv6 only), and one C{recvfrom_into}
loop serves every family alike. Sessions count toward C{--connections-max};
over it a new client's datagrams are dropped, and said once per episode.
"""

from __future__ import annotations

import errno
import math
import socket
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from .addresses import describeAddress
from .logs import debugEnabled, observer
from .notices import Notice
from .proxyheader import headerV2
from .pump import Ending

if TYPE_CHECKING:
    from .proxy import ConnectionTracker, ProxySettings
    from .target import Target

BATCH = 64
"""
Datagrams read per wake-up from one socket, so one busy client cannot
starve the others.
"""
SESSION_IDLE_TIMEOUT = 60.0
_buffer = bytearray(256 * 1024)
_view = memoryview(_buffer)
_NONBLOCKING_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def twistedAddress(family: int, address: object, kind: str = "UDP") -> object:
    """
    A socket module address as the Twisted address object PROXY headers
    and log lines take.
    """
    if family == socket.AF_INET:
        return IPv4Address(kind, address[0], address[1])
    if family == socket.AF_INET6:
        return IPv6Address(kind, address[0], address[1])
    return UNIXAddress(address or None)


class DatagramPort:
    """
    A listening datagram socket in the reactor: what clients send goes to
    the L{DatagramRelay}, and replies leave from it.
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: object, sock: socket.socket, relay: DatagramRelay) -> None:
        self.reactor = reactor
        self.socket = sock
        self.fileno = sock.fileno
        self.relay = relay
        relay.port = self
        sock.setblocking(False)

    def logPrefix(self) -> str:
        return "datagram"

    def startReading(self) -> None:
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        self.reactor.removeReader(self)

    def getHost(self) -> object:
        return twistedAddress(self.socket.family, self.socket.getsockname())

    def doRead(self) -> None:
        receive, relay = self.socket.recvfrom_into, self.relay
        for _ in range(BATCH):
            try:
                size, address = receive(_buffer)
            except BlockingIOError:
                return
            except OSError:
                continue
            relay.received(bytes(_view[:size]), address)

    def sendTo(self, data: bytes, address: object) -> bool:
        """
        Send a reply to a client; whether it went (a full buffer or an
        unreachable client drops it).
        """
        try:
            self.socket.sendto(data, address)
        except OSError:
            return False
        return True

    def connectionLost(self, reason: Failure) -> None:
        self.log.warn(
            "Datagram socket {fd} failed: {reason}", fd=self.fileno(), reason=reason.value
        )

    def stopListening(self) -> None:
        """
        Stop reading, end every session and close the socket.
        """
        self.stopReading()
        relay = self.relay
        relay.endAll(Ending.SHUTDOWN)
        self.socket.close()
        if relay.dropped:
            self.log.info(
                "{route}{dropped} datagrams dropped in all (at the connection limit, or a "
                "socket buffer full)",
                route=relay.routePrefix,
                dropped=relay.dropped,
            )


class DatagramRelay:
    """
    The sessions of one datagram listener, all forwarded to one target.

    @ivar route: the listener's name, if it has one.
    @ivar dropped: datagrams dropped (a full buffer, or over the limit).
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: object,
        target: Target,
        settings: ProxySettings,
        tracker: ConnectionTracker,
        route: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.settings = settings
        self.tracker = tracker
        self.route = route
        self.routePrefix = f"{route}: " if route is not None else ""
        self.family, self.address = target.socketAddress(socket.SOCK_DGRAM)
        timeout = settings.idleTimeout
        self.idleTimeout = SESSION_IDLE_TIMEOUT if math.isinf(timeout) else timeout
        self.port: DatagramPort | None = None
        self.sessions: dict[object, Session] = {}
        self.dropped = 0
        self.overLimit = Notice(reactor)
        self.recordsAddresses = settings.proxyProtocol is not None or debugEnabled()

    @property
    def factory(self) -> DatagramRelay:
        return self

    def received(self, data: bytes, client: object) -> None:
        """
        A datagram from C{client}: on to its session, opened if it has
        none and there is room.
        """
        session = self.sessions.get(client)
        if session is None:
            if self.tracker.room() < 1:
                self.dropped += 1
                if self.overLimit.begins():
                    self.log.warn(
                        "{route}At the connection limit: datagrams from new clients are "
                        "dropped ({dropped} datagrams dropped so far)",
                        route=self.routePrefix,
                        dropped=self.dropped,
                    )
                return
            try:
                session = Session(self, client)
            except OSError as e:
                self.dropped += 1
                self.log.warn(
                    "{route}Cannot open a session to {target} for {client}: {why}",
                    route=self.routePrefix,
                    target=str(self.target),
                    client=describeAddress(twistedAddress(self.port.socket.family, client)),
                    why=e.strerror,
                )
                return
        session.send(data)

    def endAll(self, how: Ending) -> None:
        """
        End every session (datagrams have nothing in flight to wait for).
        """
        for session in list(self.sessions.values()):
            session.end(how)


class Session:
    """
    One client of a datagram listener: its own socket connected to the
    target (on a UNIX target, bound to an automatic abstract address so
    the backend can answer), its counts, and when it last moved a datagram.

    @ivar counts: datagrams up, bytes up, datagrams down, bytes down.
    """

    __slots__ = (
        "relay", "client", "socket", "fileno", "counts", "started", "lastMoved", "timer",
        "ending", "header",
    )  # fmt: skip

    def __init__(self, relay: DatagramRelay, client: object) -> None:
        self.relay = relay
        self.client = client
        sock = socket.socket(relay.family, _NONBLOCKING_DGRAM)
        try:
            if relay.family == socket.AF_UNIX:
                sock.bind("")
            sock.connect(relay.address)
        except OSError:
            sock.close()
            raise
        self.socket = sock
        self.fileno = sock.fileno
        self.counts = [0, 0, 0, 0]
        reactor = relay.reactor
        self.started = self.lastMoved = reactor.seconds()
        self.ending: Ending | None = None
        self.header = b""
        if relay.settings.proxyProtocol is not None:
            family = relay.port.socket.family
            self.header = headerV2(
                twistedAddress(family, client), relay.port.getHost(), datagram=True
            )
        relay.sessions[client] = self
        relay.tracker.connectionOpened(self)
        reactor.addReader(self)
        self.timer = reactor.callLater(relay.idleTimeout, self._idleCheck)

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
            self.end(Ending.REFUSED)
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
                size = receive(_buffer)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                self.end(Ending.REFUSED)
                return
            except OSError:
                self.end(Ending.RESET)
                return
            if relay.port.sendTo(bytes(_view[:size]), self.client):
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
        self.end(Ending.REFUSED if code == errno.ECONNREFUSED else Ending.RESET)

    def _idleCheck(self) -> None:
        reactor = self.relay.reactor
        due = self.lastMoved + self.relay.idleTimeout
        now = reactor.seconds()
        if now < due:
            self.timer = reactor.callLater(due - now, self._idleCheck)
            return
        self.timer = None
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
        relay.sessions.pop(self.client, None)
        relay.tracker.connectionClosed(self)
        if relay.recordsAddresses:
            up, upBytes, down, downBytes = self.counts
            self.relay.log.debug(
                "{route}{listener} {client} -> {target}: {up} datagrams ({upBytes} bytes) up, "
                "{down} datagrams ({downBytes} bytes) down, {duration:.3f}s, {how}",
                route=relay.routePrefix,
                listener=describeAddress(relay.port.getHost()),
                client=describeAddress(twistedAddress(relay.port.socket.family, self.client)),
                target=str(relay.target),
                up=up,
                upBytes=upBytes,
                down=down,
                downBytes=downBytes,
                duration=relay.reactor.seconds() - self.started,
                how=how.value,
            )
