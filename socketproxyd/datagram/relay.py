# -*- test-case-name: tests.integration.test_datagram -*-
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

import math
import socket
from collections import Counter
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from socketproxyd.addresses import RawAddress, SocketAddress, describeAddress, socketAddress
from socketproxyd.datagram.packetinfo import Control, Destination, destinationKey
from socketproxyd.datagram.port import DatagramPort
from socketproxyd.datagram.session import Session
from socketproxyd.events import Ending, Tracker
from socketproxyd.logs import observer
from socketproxyd.notices import Notice
from socketproxyd.reactors import ProxyReactor
from socketproxyd.routeserver import RouteServer

if TYPE_CHECKING:
    from socketproxyd.config.settings import ProxySettings
    from socketproxyd.config.target import Target

SESSION_IDLE_TIMEOUT = 60.0
PENDING_MOST = 16
RESOLVING_MOST = 64
PENDING_BYTES = 1 << 20
"""
Clients of a named target whose name is being resolved, at most, and the
bytes their datagrams may hold meanwhile: memory stays bounded however many
sources send while the resolver is slow.
"""


class DatagramRelay(RouteServer):
    """
    The sessions of one datagram listener, all forwarded to one target: a
    literal address, or a name resolved (without blocking) for each new
    client, whose datagrams wait meanwhile (at most L{PENDING_MOST} each,
    L{PENDING_BYTES} in all).

    @ivar drops: datagrams dropped, by why: C{unbound_client} (a UNIX
        client with no address to reply to), C{limit} (a new client at the
        connection limit), C{queue_full} (too much waiting for the target's
        name), C{unresolved}, C{no_session} (no socket could be opened to
        the target), C{upstream_failed} and C{downstream_failed} (a full
        socket buffer or an error sending to the target or the client).
    @ivar resolving: the datagrams of clients whose target is being
        resolved.
    """

    log = Logger(observer=observer)
    port: DatagramPort

    def __init__(
        self,
        reactor: ProxyReactor,
        target: Target,
        settings: ProxySettings,
        tracker: Tracker,
        route: str | None = None,
    ) -> None:
        super().__init__(reactor, target, settings, tracker, route)
        self.addresses: list[SocketAddress] | None = None
        if target.kind != "name":
            self.addresses = [target.socketAddress(socket.SOCK_DGRAM)]
        timeout = settings.idleTimeout
        self.idleTimeout = SESSION_IDLE_TIMEOUT if math.isinf(timeout) else timeout
        self.sessions: dict[object, Session] = {}
        self.resolving: dict[object, list[bytes]] = {}
        self.pendingBytes = 0
        self.drops: Counter[str] = Counter()
        self.overLimit = Notice(reactor)
        self.trouble = Notice(reactor)

    def listenOn(self, sock: socket.socket) -> DatagramPort:
        """
        The port that reads C{sock}, a bound datagram socket, for this
        relay (to be started).
        """
        return DatagramPort(self.reactor, sock, self)

    def received(self, data: bytes, client: RawAddress, ancillary: Control | None = None) -> None:
        """
        A datagram from C{client} (with C{ancillary} data that may say
        where it was sent): on to its session, opened if it has none and
        there is room. A client has a session per address it writes to.
        """
        key = client if ancillary is None else (client, destinationKey(ancillary))
        session = self.sessions.get(key)
        if session is not None:
            session.send(data)
            return
        waiting = self.resolving.get(key)
        if not client:
            self.drops["unbound_client"] += 1
            self.warn(
                "{route}Datagrams from unbound UNIX clients are dropped: no reply could reach them"
            )
        elif waiting is not None:
            if len(waiting) < PENDING_MOST and self.pendingBytes < PENDING_BYTES:
                waiting.append(data)
                self.pendingBytes += len(data)
            else:
                self.drops["queue_full"] += 1
        elif self.tracker.room() - len(self.resolving) < 1:
            self.drops["limit"] += 1
            if self.overLimit.begins():
                self.log.warn(
                    "{route}At the connection limit: datagrams from new clients are "
                    "dropped ({dropped} datagrams dropped so far)",
                    route=self.routePrefix,
                    dropped=self.dropped(),
                )
        elif self.addresses is not None:
            self.open(client, key, self.port.destination(ancillary), self.addresses, [data])
        elif len(self.resolving) >= RESOLVING_MOST or self.pendingBytes >= PENDING_BYTES:
            self.drops["queue_full"] += 1
        else:
            self.resolving[key] = [data]
            self.pendingBytes += len(data)
            receiver = _Resolution(self, client, key, self.port.destination(ancillary))
            target = self.target
            assert target.port is not None, "a named target has a port"
            self.reactor.nameResolver.resolveHostName(
                receiver, target.host, target.port, transportSemantics="UDP"
            )

    def resolved(
        self,
        client: RawAddress,
        key: object,
        destination: Destination | None,
        addresses: list[IAddress],
    ) -> None:
        """
        The target's name resolved for C{client}: open its session on
        those addresses with what it sent meanwhile.
        """
        waiting = self.resolving.pop(key, None)
        if waiting is None:
            return
        self.pendingBytes -= sum(map(len, waiting))
        found: list[SocketAddress] = [
            (socket.AF_INET6 if isinstance(a, IPv6Address) else socket.AF_INET, (a.host, a.port))
            for a in addresses
            if isinstance(a, (IPv4Address, IPv6Address))
        ]
        if not found:
            self.drops["unresolved"] += len(waiting)
            self.warn("{route}Cannot resolve {target}; datagrams of new clients are dropped")
            return
        self.open(client, key, destination, found, waiting)

    def open(
        self,
        client: RawAddress,
        key: object,
        destination: Destination | None,
        addresses: list[SocketAddress],
        data: list[bytes],
    ) -> None:
        """
        Open C{client}'s session, known by C{key} (on the first address
        that takes a socket) and send it C{data}; its replies leave from
        C{destination} when the listening socket is bound to a wildcard
        address.
        """
        while addresses:
            try:
                session = Session(self, client, key, destination, addresses)
            except OSError as e:
                addresses = addresses[1:]
                why = e.strerror or str(e)
                continue
            for datagram in data:
                session.send(datagram)
            return
        self.drops["no_session"] += len(data)
        self.warn("{route}Cannot open a session to {target} for {client}: {why}", client, why)

    def dropped(self) -> int:
        """
        How many datagrams were dropped in all.
        """
        return sum(self.drops.values())

    def warn(self, text: str, client: RawAddress | None = None, why: str = "") -> None:
        """
        Say that datagrams are being dropped, at most once a minute.
        """
        if self.trouble.begins():
            self.log.warn(
                text,
                route=self.routePrefix,
                target=str(self.target),
                client=self.describe(client) if client else "",
                why=why,
            )

    def describe(self, client: RawAddress) -> str:
        return describeAddress(socketAddress(self.port.socket.family, client, "UDP"))

    def endAll(self, how: Ending) -> None:
        """
        End every session (datagrams have nothing in flight to wait for).
        """
        self.resolving.clear()
        self.pendingBytes = 0
        for session in list(self.sessions.values()):
            session.end(how)


@implementer(IResolutionReceiver)
class _Resolution:
    """
    Collects the addresses the target's name resolves to for one client,
    which keeps its session's key and where it wrote to meanwhile.
    """

    def __init__(
        self, relay: DatagramRelay, client: RawAddress, key: object, destination: Destination | None
    ) -> None:
        self.relay = relay
        self.client = client
        self.key = key
        self.destination = destination
        self.addresses: list[IAddress] = []

    def resolutionBegan(self, resolution: object) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.relay.resolved(self.client, self.key, self.destination, self.addresses)
