# -*- test-case-name: tests.unit.test_metrics -*-
"""
The metrics served over HTTP by C{twisted.web}: C{GET /metrics} (and
C{HEAD}) in Prometheus's text format, or OpenMetrics when the scraper's
C{Accept} asks for it; other paths are 404 and other methods 405, as
C{twisted.web} answers them.

The exposition runs on the reactor's thread, where the connections it
reads live (C{prometheus_client.twisted.MetricsResource} would collect in
a thread pool).
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import Request
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site


class NothingBelow(Resource):
    """
    A resource under which every path but its own children is 404 (the
    child C{twisted.web}'s L{Resource} gives otherwise is deprecated).
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class MetricsResource(NothingBelow):
    """
    C{/metrics}: the exposition of C{registry}, encoded as the request's
    C{Accept} header chooses (it has no children: below it is 404).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request: Request) -> bytes:
        """
        C{GET} and C{HEAD}; every other method is 405 with C{Allow}
        (C{twisted.web} would answer 501 to those it does not know).
        """
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader("allow", "GET, HEAD")
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"Method Not Allowed: use GET or HEAD\n"
        return super().render(request)

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept") or ""
        encoder, contentType = choose_encoder(accept)
        request.setHeader("content-type", contentType)
        return encoder(self.registry)

    def render_HEAD(self, request: Request) -> bytes:
        """
        The headers C{GET} would give, and no body.
        """
        body = self.render_GET(request)
        request.setHeader("content-length", str(len(body)))
        return b""


class MetricsSite(Site):
    """
    The metrics' HTTP server: C{/metrics} and nothing else, with no
    access log (a scraper asks every few seconds, and the proxy's log is
    for its clients).
    """

    noisy = False

    def __init__(self, registry: CollectorRegistry, reactor: IReactorTime) -> None:
        root = NothingBelow()
        root.putChild(b"metrics", MetricsResource(registry))
        super().__init__(root, reactor=reactor)

    def startFactory(self) -> None:
        """
        Nothing: C{HTTPFactory} would start its access log's clock here, a
        timer due every second for as long as the site listens, and while
        any timer is pending the reactor reads the clock on every turn of
        its loop, which would tax every proxied connection.
        """

    def log(self, request: Request) -> None:
        """
        Write no access line.
        """
