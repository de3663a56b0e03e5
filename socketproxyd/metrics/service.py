# -*- test-case-name: tests.integration.test_metrics -*-
"""
L{MetricsService}: the metrics' own listener, outside the connection
limit and the idle exit: a scrape is not a connection. C{--metrics} is a
Twisted server endpoint (C{tcp:9105:interface=127.0.0.1}), or, without a
colon, the name of inherited sockets (C{FileDescriptorName=metrics}),
which are then served as metrics and not proxied. Either is checked
before anything opens; the listener opens first and closes when the
proxy has stopped, last, so a scrape during a drain is answered. Its
scrapers are admitted by L{ScrapeAdmission}.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from socketproxyd.addresses import describeAddress
from socketproxyd.logs import observer
from socketproxyd.metrics.collector import MetricsCollector
from socketproxyd.metrics.scrapes import ScrapeAdmission
from socketproxyd.metrics.web import MetricsSite
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.listenerset import ListenerSet
from socketproxyd.service.opening import StartupError, exitAtStartup, listenNow, serverEndpoint
from socketproxyd.stream.acceptor import Acceptor, adoptable
from socketproxyd.systemd.activation import InheritedSocket, adopt

EXAMPLES = "tcp:9105:interface=127.0.0.1 or unix:/run/socketproxyd/metrics.sock"


class MetricsService(Service):
    """
    Serves the ledger's metrics and the process's on C{description}.

    @ivar collector: the ledger's consumer that keeps the totals.
    @ivar name: the name of the inherited sockets to serve on, when
        C{description} names them rather than an endpoint.
    @ivar ports: the metrics listeners, while they are open.

    @raise StartupError: when C{description} is not a server endpoint, or
        names sockets that a C{--target} also routes.
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: ProxyReactor,
        description: str,
        ledger: Ledger,
        limit: ConnectionLimit,
        listening: ListenerSet,
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.name = description if ":" not in description else None
        self.endpoint: IStreamServerEndpoint | None = None
        if self.name is None:
            self.endpoint = serverEndpoint(reactor, "--metrics", description, EXAMPLES)
        elif self.name in listening.routes.named:
            raise StartupError(
                f"--metrics={self.name}: the sockets named {self.name!r} are routed by "
                f"--target={self.name}=...; serve metrics on other ones"
            )
        self.collector = MetricsCollector(reactor, ledger, limit, listening)
        registry = CollectorRegistry()
        registry.register(self.collector)
        ProcessCollector(registry=registry)
        self.site = MetricsSite(registry, reactor)
        self.scrapes = ScrapeAdmission(reactor, self.site, limit.budget)
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        self.open()
        super().privilegedStartService()

    def startService(self) -> None:
        self.open()
        super().startService()

    def open(self) -> None:
        """
        Listen on the endpoint, once, however the service is started; a
        listener that cannot be opened exits 1 with one line.
        """
        if self.endpoint is None or self.ports:
            return
        try:
            self._serving(listenNow(self.endpoint, "--metrics", self.description, self.scrapes))
        except StartupError as e:
            exitAtStartup(str(e))

    def takeInherited(self, inherited: Sequence[InheritedSocket]) -> list[InheritedSocket]:
        """
        Serve metrics on the inherited sockets of C{name}, if that is where
        they go, and give back the others, to be proxied; exit 1 with one
        line when no socket has the name or one of them is not a stream.
        """
        if self.name is None:
            return list(inherited)
        mine = [sock for sock in inherited if sock.name == self.name]
        if not mine:
            names = ", ".join(sorted({sock.name for sock in inherited})) or "none"
            exitAtStartup(
                f"--metrics={self.name}: no inherited socket is named {self.name!r} "
                f"(socket names: {names}); name one with FileDescriptorName={self.name}"
            )
        for sock in mine:
            if sock.datagram:
                exitAtStartup(f"--metrics={self.name}: {sock.describe()} is not a stream socket")
        for sock in mine:
            self._serving(adopt(self.reactor, sock, self.scrapes))
        return [sock for sock in inherited if sock.name != self.name]

    def _serving(self, port: IListeningPort) -> None:
        self.ports.append(port)
        if adoptable(port, self.scrapes):
            acceptor = Acceptor(self.reactor, port, self.scrapes, self.scrapes.accepted)
            self.scrapes.acceptors.append(acceptor)
            acceptor.startReading()
        self.log.info(
            "Serving metrics on {address} ({description})",
            address=describeAddress(port.getHost()),
            description=self.description,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.scrapes.close()
        ports, self.ports = self.ports, []
        closing = gatherResults([maybeDeferred(port.stopListening) for port in ports])
        return closing.addCallback(lambda _: None)
