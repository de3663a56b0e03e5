"""
How long a Prometheus scrape of socketproxyd takes with many connections
open.

    python benchmarks/scrape.py [--connections 10000] [--scrapes 20]

socketproxyd runs with C{--metrics} in front of a throwaway nginx; the
benchmark opens idle keep-alive connections through it (each having
completed one request) up to C{--connections} or as many as the process's
descriptors allow (the proxy holds two per connection, so under a hard
limit of 20,000 somewhat fewer than 10,000 fit), then times C{--scrapes}
scrapes of C{/metrics}, each on a new connection as a scraper's first is:
from connecting to the last byte of the exposition. The exposition's own
C{socketproxyd_connections_active} says how many were open.

It then times the collector alone in this process, on a ledger of
C{--connections} open clients with no descriptors behind them: the part of
a scrape that grows with the connections, where no limit applies.
"""

from __future__ import annotations

import argparse
import http.client
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import Nginx, ensureTools, freePort, socketproxyd  # noqa: E402

REQUEST = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"


def holdConnections(port: int, count: int) -> list[socket.socket]:
    """
    Up to C{count} connections through the proxy on C{port}, each having
    had its reply; fewer when the proxy (or this process) runs out of
    descriptors.
    """
    held: list[socket.socket] = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(REQUEST)
            if not sock.recv(4096).startswith(b"HTTP/1.1 200"):
                sock.close()
                break
        except OSError:
            break
        held.append(sock)
    return held


def scrape(port: int) -> tuple[float, bytes]:
    """
    One scrape on a new connection: seconds to the last byte, and the body.
    """
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"scrape: HTTP {response.status}")
    return elapsed, body


def activeConnections(body: bytes) -> float:
    """
    The sum of C{socketproxyd_connections_active} in an exposition.
    """
    return sum(
        float(line.rsplit(None, 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("socketproxyd_connections_active{")
    )


def collectorAlone(count: int, scrapes: int) -> list[float]:
    """
    Seconds of each of C{scrapes} expositions of the collector (and the
    process collector) with C{count} open clients on two routes.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.process_collector import ProcessCollector
    from twisted.internet.task import Clock

    from socketproxyd.metrics.collector import MetricsCollector
    from socketproxyd.service.ledger import Ledger
    from socketproxyd.service.limit import ConnectionLimit
    from tests.support.fakes import FakeListening, FakeRouteServer, FakeServed

    clock = Clock()
    limit = ConnectionLimit(clock, count)
    ledger = Ledger(limit)
    routes = [FakeRouteServer("web"), FakeRouteServer("db")]
    collector = MetricsCollector(
        clock,
        ledger,
        limit,
        FakeListening({route.route: route for route in routes}),  # type: ignore[arg-type]
    )
    ledger.follow(collector, opens=False)
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    for i in range(count):
        ledger.opened(FakeServed(routes[i % 2], [i, 2 * i], started=1.0, connected=1.001))
    times = []
    for _ in range(scrapes):
        start = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - start)
    return times


def _report(label: str, times: list[float]) -> None:
    print(
        f"  {label}: median {statistics.median(times) * 1e3:.1f} ms, "
        f"max {max(times) * 1e3:.1f} ms ({len(times)} scrapes)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args(argv)
    ensureTools()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    metricsPort = freePort()
    proxy = socketproxyd("socketproxyd", "auto", f"--metrics=tcp:{metricsPort}:interface=127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        nginx = Nginx(Path(tmp))
        held: list[socket.socket] = []
        try:
            port = proxy.start(nginx.port)
            idle = [scrape(metricsPort)[0] for _ in range(args.scrapes)]
            held = holdConnections(port, args.connections)
            results = [scrape(metricsPort) for _ in range(args.scrapes)]
            active = activeConnections(results[-1][1])
        finally:
            for sock in held:
                sock.close()
            proxy.stop()
            nginx.stop()
    print("scrapes of socketproxyd over HTTP, each on a new connection:")
    _report("no connection open", idle)
    _report(
        f"{active:,.0f} connections open (of {args.connections:,} asked)", [t for t, _ in results]
    )
    print(f"the collector alone, {args.connections:,} open clients without sockets:")
    _report("exposition", collectorAlone(args.connections, args.scrapes))


if __name__ == "__main__":
    main()
