# -*- test-case-name: tests.integration.test_metrics -*-
"""
L{MetricsService}: the metrics' own listener (C{--metrics=ENDPOINT}),
outside the connection limit and the idle exit: a scrape is not a
connection. Its endpoint is checked when it is built, before anything
opens; it opens when the proxy starts, first, and closes when the proxy
has stopped, last, so a scrape during a drain is answered.
"""

from __future__ import annotations

from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort

from socketproxyd.metrics.collector import MetricsCollector
from socketproxyd.metrics.web import MetricsSite
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.listenerset import ListenerSet
from socketproxyd.service.opening import StartupError, exitAtStartup, listenNow, serverEndpoint

EXAMPLES = "tcp:9105:interface=127.0.0.1 or unix:/run/socketproxyd/metrics.sock"


class MetricsService(Service):
    """
    Serves the ledger's metrics and the process's on C{description}.

    @ivar collector: the ledger's consumer that keeps the totals.
    @ivar port: the metrics listener, while it is open.

    @raise StartupError: when C{description} is not a server endpoint.
    """

    def __init__(
        self,
        reactor: ProxyReactor,
        description: str,
        ledger: Ledger,
        limit: ConnectionLimit,
        listening: ListenerSet,
    ) -> None:
        self.description = description
        self.endpoint = serverEndpoint(reactor, "--metrics", description, EXAMPLES)
        self.collector = MetricsCollector(reactor, ledger, limit, listening)
        registry = CollectorRegistry()
        registry.register(self.collector)
        ProcessCollector(registry=registry)
        self.site = MetricsSite(registry)
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        self.open()
        super().privilegedStartService()

    def startService(self) -> None:
        self.open()
        super().startService()

    def open(self) -> None:
        """
        Listen, once, however the service is started; a listener that
        cannot be opened exits 1 with one line.
        """
        if self.port is not None:
            return
        try:
            self.port = listenNow(self.endpoint, "--metrics", self.description, self.site)
        except StartupError as e:
            exitAtStartup(str(e))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        closing = port.stopListening()
        return closing if closing is not None else succeed(None)
