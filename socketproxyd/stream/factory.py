# -*- test-case-name: tests.unit.test_connection_factory -*-
"""
L{ProxyFactory}: what the connections of one route share (the target, the
settings, the tracker they report to), and where each accepted client
becomes a L{socketproxyd.stream.connection.Connection} on the data path the
settings choose.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, ServerFactory
from twisted.logger import Logger

from socketproxyd.addresses import describeAddress, socketAddress
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.config.timespan import formatTimespan
from socketproxyd.events import Tracker
from socketproxyd.logs import observer
from socketproxyd.notices import Notice
from socketproxyd.reactors import ProxyReactor
from socketproxyd.routeserver import RouteServer
from socketproxyd.stream.connection import Connection
from socketproxyd.stream.headerreader import HeaderReader
from socketproxyd.stream.splice.connector import BareConnector
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.stream.splice.pipes import available as spliceAvailable
from socketproxyd.stream.splice.pump import SplicePump
from socketproxyd.stream.transportpump import ClientProtocol, ServerProtocol

if TYPE_CHECKING:
    from socketproxyd.stream.earlyrelay import EarlyPair


class ProxyFactory(RouteServer, ServerFactory):
    """
    Builds a connection for every client accepted on the listeners of one
    route, all forwarded to its target.

    Clients come two ways: as bare sockets from the proxy's own acceptors
    (L{accepted}), or as protocols Twisted builds for a port it accepts on
    itself (L{buildProtocol}, e.g. a TLS C{--listen}).

    @ivar sweeper: the pipe sweeper every route shares.
    @ivar endpoint: the target's client endpoint, shared by all connections.
    @ivar splices: whether accepted sockets go to the splice pump (the data
        path allows it and the platform has splice(2)).
    @ivar bareConnector: connects the target with bare sockets for the
        splice pump (see L{socketproxyd.stream.splice.connector}), or C{None}.
    @ivar clientFactory: builds the L{ClientProtocol} of each connection
        made through L{endpoint}.
    """

    protocol = ServerProtocol
    noisy = False
    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: ProxyReactor,
        target: Target,
        settings: ProxySettings,
        tracker: Tracker,
        sweeper: PipeSweeper | None = None,
        route: str | None = None,
    ) -> None:
        super().__init__(reactor, target, settings, tracker, route)
        self.endpoint = target.endpoint(reactor, settings.connectTimeout)
        self.splices = settings.dataPath != "transport" and spliceAvailable()
        self.bareConnector = None
        if self.splices:
            self.bareConnector = BareConnector.forTarget(reactor, target, self.endpoint)
        self.clientFactory = Factory.forProtocol(ClientProtocol)
        self.clientFactory.noisy = False
        if sweeper is None:
            sweeper = PipeSweeper(reactor, None, tracker.fdsExhausted, settings.pipeSize)
        self.sweeper = sweeper
        self.notReady = Notice(reactor, interval=0)
        self.acceptsHeader = settings.acceptsHeaderOn(route)
        self.badHeaders = Notice(reactor, interval=0)

    def targetNotReady(self, why: str) -> None:
        """
        A connection found the target not ready and will try again: said
        once per episode.
        """
        if not self.notReady.said and self.notReady.begins():
            self.log.warn(
                "{route}{target} is not ready ({why}); clients wait up to {span} for it",
                route=self.routePrefix,
                target=str(self.target),
                why=why,
                span=formatTimespan(self.settings.connectRetry),
            )

    def targetReady(self) -> None:
        """
        A connection that waited for the target reached it.
        """
        if self.notReady.ends():
            self.log.info(
                "{route}{target} is ready", route=self.routePrefix, target=str(self.target)
            )

    def targetGivenUp(self) -> None:
        """
        A connection stopped waiting for the target: the next to wait says
        so again.
        """
        self.notReady.ends()

    def accepted(self, sock: socket.socket, address: object) -> None:
        """
        A client accepted by the proxy's own acceptor (non-blocking): serve
        it on the splice pump, or hand it to Twisted as a transport.
        """
        if not self.splices:
            try:
                self.reactor.adoptStreamConnection(sock.fileno(), sock.family, self)
            finally:
                sock.close()
            return
        connection = self._connection(sock, address)
        if self.acceptsHeader:
            connection.awaitHeader(HeaderReader(self.reactor, sock))
        else:
            connection.start()

    def headerRefused(self, peer: IAddress | None, why: str) -> None:
        """
        A client sent no valid PROXY header and was closed: said once per
        episode, which a client with a valid header ends.
        """
        if not self.badHeaders.said and self.badHeaders.begins():
            self.log.warn(
                "{route}Closed {peer}: no valid PROXY header ({why}); clients closed for the "
                "same are not logged until one sends a valid header",
                route=self.routePrefix,
                peer=describeAddress(peer),
                why=why,
            )

    def headerAccepted(self) -> None:
        """
        A client sent a valid PROXY header.
        """
        self.badHeaders.ends()

    def adopt(self, pair: EarlyPair) -> None:
        """
        A client the early relay served while Twisted loaded: its
        connection takes over where the relay left off (see
        L{Connection.adopt}).
        """
        client, _ = pair.sockets()
        self._connection(client, pair.peer).adopt(pair)

    def _connection(self, sock: socket.socket, address: object) -> Connection:
        """
        The connection of an accepted client, on the splice pump.
        """
        peer = host = None
        if self.recordsAddresses:
            family = sock.family
            peer = socketAddress(family, address)
            host = socketAddress(family, sock.getsockname())
        pump = SplicePump(self.reactor, self.sweeper, sock, self.settings.keepalive)
        return Connection(self, pump, peer, host)

    def connectTarget(
        self, takesSockets: bool, peer: IAddress | None = None
    ) -> socket.socket | Deferred[Any]:
        """
        Start connecting to the target for a pump: a connected socket at
        once, or a Deferred firing with a socket or a L{ClientProtocol}
        (only the latter for a pump that does not take sockets). With
        C{--transparent}, from C{peer}, the client's own address, if it can
        be used (see L{transparentSource}).
        """
        if takesSockets and self.bareConnector is not None:
            source = None
            if self.settings.transparent:
                try:
                    source = self.transparentSource(self.bareConnector.family, peer)
                except OSError as e:
                    return fail(error.getConnectError(e))
            return self.bareConnector.attempt(self.clientFactory, source)
        return self.endpoint.connect(self.clientFactory)
