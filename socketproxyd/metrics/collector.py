# -*- test-case-name: tests.unit.test_metrics -*-
"""
L{MetricsCollector}: what the proxy has served, as Prometheus metric
families. It follows the ledger as a consumer, adding each client's
counts to its route's totals when it closes, and at scrape time adds the
counts of what is open: nothing is done per read or per accept, and a
close costs a few additions (``benchmarks/profile.py metrics``). Every
listener's route has its connection, byte, session and datagram counts
from the start, at zero (its histograms from its first close, its
dropped datagrams from the first of each reason).
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import twisted
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime

from socketproxyd import __version__
from socketproxyd.events import DOWNSTREAM, UPSTREAM, Ending, Served
from socketproxyd.metrics.durations import CONNECT_BUCKETS, DURATION_BUCKETS, durationsFamily
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.listenerset import ListenerSet

if TYPE_CHECKING:
    from socketproxyd.routeserver import RouteServer

DIRECTIONS = {UPSTREAM: "upstream", DOWNSTREAM: "downstream"}
"""
The C{direction} label of each direction: C{upstream} is client to target.
"""
DONE = Ending.DONE
FIRST_DURATION = DURATION_BUCKETS[0]
FIRST_CONNECT = CONNECT_BUCKETS[0]
ENDINGS = {ending: ending.value.replace(" ", "_") for ending in Ending}
"""
The C{ending} label of each L{Ending}: as the close line says it, in
snake_case.
"""


def routeLabel(server: RouteServer) -> str:
    """
    The C{route} label: the listener's name, empty for an unnamed one.
    """
    return server.route or ""


class RouteCounts:
    """
    What one route's clients add up to: kept per route server for those
    that have closed, so that a close is a handful of additions, and
    summed by route label at scrape time with what is open.

    @ivar sessions: whether these are datagram sessions, not connections
        (known from the first close).
    @ivar active: connections (or sessions) open now; counted at scrape
        time only.
    @ivar closed: connections (or sessions) closed. What is accepted is
        what has closed and what is open, so an accept adds nothing.
    @ivar endings: the closed connections that did not end as C{done},
        by how they ended (the rest ended as C{done}: an enum's hash is
        computed in Python, and most connections need none).
    @ivar upstream: bytes from clients to the target; C{downstream} the
        other way (two attributes: adding to an item of a list costs a
        close half as much again).
    @ivar datagrams: datagrams of sessions, indexed by direction.
    @ivar lifetimes: how many connections with recorded times lasted up
        to each of L{DURATION_BUCKETS} from accept to close (and the last
        for longer), and C{lifetimesTotal} their sum.
    @ivar connectTimes: likewise of those that connected, from accept to
        connected, by L{CONNECT_BUCKETS}, and C{connectTimesTotal}.
    """

    __slots__ = (
        "sessions", "active", "closed", "endings", "upstream", "downstream", "datagrams",
        "lifetimes", "lifetimesTotal", "connectTimes", "connectTimesTotal",
    )  # fmt: skip

    def __init__(self) -> None:
        self.sessions = False
        self.active = 0
        self.closed = 0
        self.endings: dict[Ending, int] = {}
        self.upstream = 0
        self.downstream = 0
        self.datagrams = [0, 0]
        self.lifetimes = [0] * (len(DURATION_BUCKETS) + 1)
        self.lifetimesTotal = 0.0
        self.connectTimes = [0] * (len(CONNECT_BUCKETS) + 1)
        self.connectTimesTotal = 0.0

    def add(self, other: RouteCounts) -> None:
        """
        Count C{other}'s clients too.
        """
        self.active += other.active
        self.closed += other.closed
        for ending, count in other.endings.items():
            self.endings[ending] = self.endings.get(ending, 0) + count
        self.upstream += other.upstream
        self.downstream += other.downstream
        _addTo(self.datagrams, other.datagrams)
        self.lifetimes = [a + b for a, b in zip(self.lifetimes, other.lifetimes, strict=True)]
        self.lifetimesTotal += other.lifetimesTotal
        self.connectTimes = [
            a + b for a, b in zip(self.connectTimes, other.connectTimes, strict=True)
        ]
        self.connectTimesTotal += other.connectTimesTotal

    @property
    def moved(self) -> list[int]:
        """
        Bytes, indexed by direction.
        """
        return [self.upstream, self.downstream]

    def byEnding(self) -> dict[str, int]:
        """
        The closed connections by C{ending} label, C{done} always among
        them.
        """
        labelled = {ENDINGS[DONE]: self.closed - sum(self.endings.values())}
        labelled.update((ENDINGS[ending], count) for ending, count in self.endings.items())
        return labelled


class MetricsCollector(Collector):
    """
    The proxy's own metrics (see the module docstring), for a
    C{CollectorRegistry}; a consumer of C{ledger}'s events.

    @ivar totals: the closed clients' L{RouteCounts}, by route server,
        from its first close (connections and sessions alike: one lookup a
        close).
    @ivar listening: the listeners, whose route servers count connect
        retries and dropped datagrams, and whose routes have series before
        their first client.
    """

    def __init__(
        self, clock: IReactorTime, ledger: Ledger, limit: ConnectionLimit, listening: ListenerSet
    ) -> None:
        self.now = clock.seconds
        self.ledger = ledger
        self.limit = limit
        self.listening = listening
        self.totals: defaultdict[RouteServer, RouteCounts] = defaultdict(RouteCounts)

    def opened(self, served: Served) -> None:
        """
        Nothing: an open client is counted at scrape time.
        """

    def closed(self, served: Served) -> None:
        """
        Add C{served}'s counts to its route server's: the work of
        C{--metrics} at each close, written out in one function (each call
        and attribute it saves is a share of the CPU a connection costs;
        C{benchmarks/instructions.py}). Most durations of a local target
        fall in the first bucket, found with one comparison.
        """
        totals = self.totals[served.server]
        totals.closed += 1
        counts = served.counts
        totals.upstream += counts[UPSTREAM]
        totals.downstream += counts[DOWNSTREAM]
        datagrams = served.datagrams
        if datagrams is not None:
            totals.sessions = True
            _addTo(totals.datagrams, datagrams)
            return
        ending = served.ending
        if ending is not DONE and ending is not None:
            totals.endings[ending] = totals.endings.get(ending, 0) + 1
        started = served.started
        if started:
            seconds = self.now() - started
            totals.lifetimes[
                0 if seconds <= FIRST_DURATION else bisect_left(DURATION_BUCKETS, seconds)
            ] += 1
            totals.lifetimesTotal += seconds
            connected = served.connected
            if connected:
                seconds = connected - started
                totals.connectTimes[
                    0 if seconds <= FIRST_CONNECT else bisect_left(CONNECT_BUCKETS, seconds)
                ] += 1
                totals.connectTimesTotal += seconds

    def collect(self) -> Iterator[Metric]:
        """
        Every metric family, with the counts of what is open now added to
        the totals of what has closed.
        """
        streams = _byRoute(self.totals, self.listening.factories.values(), sessions=False)
        relays = _byRoute(self.totals, self.listening.relays, sessions=True)
        for served in self.ledger.open:
            datagrams = served.datagrams
            counts = (streams if datagrams is None else relays)[routeLabel(served.server)]
            counts.active += 1
            counts.upstream += served.counts[UPSTREAM]
            counts.downstream += served.counts[DOWNSTREAM]
            if datagrams is not None:
                _addTo(counts.datagrams, datagrams)

        yield from _openAndServed("connections", "Connections", "accepted", streams)
        yield _family(
            CounterMetricFamily,
            "connections_closed",
            "Connections closed, by how they ended (as the close line says it).",
            ["route", "ending"],
            {
                (route, ending): count
                for route, counts in streams.items()
                for ending, count in counts.byEnding().items()
            },
        )
        yield _family(
            CounterMetricFamily,
            "bytes",
            "Bytes moved by connections, open ones included; upstream is client to target.",
            ["route", "direction"],
            _byDirection(streams, "moved"),
        )
        yield from _openAndServed("sessions", "Datagram sessions", "opened", relays)
        yield _family(
            CounterMetricFamily,
            "datagrams",
            "Datagrams forwarded by sessions, open ones included.",
            ["route", "direction"],
            _byDirection(relays, "datagrams"),
        )
        yield _family(
            CounterMetricFamily,
            "datagram_bytes",
            "Bytes of the datagrams forwarded by sessions, open ones included.",
            ["route", "direction"],
            _byDirection(relays, "moved"),
        )
        timed = {route: counts for route, counts in streams.items() if counts.closed}
        yield durationsFamily(
            "socketproxyd_connect_duration_seconds",
            "Seconds from accepting a client to its target's answer.",
            CONNECT_BUCKETS,
            {r: (c.connectTimes, c.connectTimesTotal) for r, c in timed.items()},
        )
        yield durationsFamily(
            "socketproxyd_connection_duration_seconds",
            "Seconds from accepting a client to closing its connection.",
            DURATION_BUCKETS,
            {r: (c.lifetimes, c.lifetimesTotal) for r, c in timed.items()},
        )
        retries: Counter[str] = Counter()
        for factory in self.listening.factories.values():
            retries[routeLabel(factory)] += factory.connectRetries
        drops: Counter[tuple[str, str]] = Counter()
        for relay in self.listening.relays:
            for reason, count in relay.drops.items():
                drops[routeLabel(relay), reason] += count
        yield _family(
            CounterMetricFamily,
            "connect_retries",
            "Times a target that was not ready was tried again (--connect-retry).",
            ["route"],
            retries,
        )
        yield _family(
            CounterMetricFamily,
            "datagrams_dropped",
            "Datagrams dropped, by why (a new client at the limit, a full socket buffer, ...).",
            ["route", "reason"],
            drops,
        )
        limit = self.limit
        yield GaugeMetricFamily(
            "socketproxyd_connections_max",
            "Connections and sessions served at most at once (-c, or what descriptors allow).",
            value=limit.capacity,
        )
        yield CounterMetricFamily(
            "socketproxyd_limit_reached",
            "Times the connection limit was reached (new clients then wait in the backlog).",
            value=limit.timesFull,
        )
        yield CounterMetricFamily(
            "socketproxyd_descriptor_exhaustion",
            "Times the process ran out of file descriptors.",
            value=limit.exhaustions,
        )
        yield InfoMetricFamily(
            "socketproxyd_build",
            "The proxy's version, and Twisted's and Python's.",
            value={
                "version": __version__,
                "twisted_version": twisted.__version__,
                "python_version": platform.python_version(),
            },
        )


def _openAndServed(
    name: str, what: str, served: str, routes: Mapping[str, RouteCounts]
) -> Iterator[Metric]:
    """
    The gauge C{NAME_active} of what is open now and the counter C{NAME}
    of all served (closed and open), by route: connections or sessions.
    """
    yield _family(
        GaugeMetricFamily,
        f"{name}_active",
        f"{what} open now.",
        ["route"],
        {route: counts.active for route, counts in routes.items()},
    )
    yield _family(
        CounterMetricFamily,
        name,
        f"{what} {served}.",
        ["route"],
        {route: counts.closed + counts.active for route, counts in routes.items()},
    )


def _byRoute(
    totals: Mapping[RouteServer, RouteCounts], servers: Iterable[RouteServer], sessions: bool
) -> defaultdict[str, RouteCounts]:
    """
    The closed connections' (or, with C{sessions}, sessions') counts
    summed by route label, with every one of C{servers}' routes among them
    (at zero before its first client).
    """
    routes: defaultdict[str, RouteCounts] = defaultdict(RouteCounts)
    for server in servers:
        routes[routeLabel(server)]
    for server, counts in totals.items():
        if counts.sessions is sessions:
            routes[routeLabel(server)].add(counts)
    return routes


def _byDirection(routes: Mapping[str, RouteCounts], field: str) -> dict[tuple[str, str], int]:
    """
    One of L{RouteCounts}' per-direction counts, by route and direction.
    """
    return {
        (route, label): getattr(counts, field)[direction]
        for route, counts in routes.items()
        for direction, label in DIRECTIONS.items()
    }


def _addTo(totals: list[int], counts: list[int]) -> None:
    for direction in DIRECTIONS:
        totals[direction] += counts[direction]


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: list[str],
    values: Mapping[Any, int],
) -> CounterMetricFamily | GaugeMetricFamily:
    """
    A labelled family C{socketproxyd_NAME} (a counter's C{_total} is added
    by the exposition), one sample per key of C{values}, in order.
    """
    family = kind(f"socketproxyd_{name}", documentation, labels=labels)
    for key in sorted(values):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], values[key])
    return family
