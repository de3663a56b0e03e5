# -*- test-case-name: tests.unit.test_metrics -*-
"""
L{MetricsCollector}: what the proxy has served, as Prometheus metric
families. It follows the ledger as a consumer, adding each client's
counts to its route's totals when it closes, and at scrape time adds the
counts of what is open: nothing is done per read. Every listener's route
has its counts from the start, at zero.
"""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

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
from socketproxyd.metrics.durations import CONNECT_BUCKETS, DURATION_BUCKETS, Durations
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.listenerset import ListenerSet

DIRECTIONS = {UPSTREAM: "upstream", DOWNSTREAM: "downstream"}
"""
The C{direction} label of each direction: C{upstream} is client to target.
"""
ENDINGS = {ending: ending.value.replace(" ", "_") for ending in Ending}
"""
The C{ending} label of each L{Ending}: as the close line says it, in
snake_case.
"""


def routeLabel(served: Served) -> str:
    """
    The C{route} label: the listener's name, empty for an unnamed one.
    """
    return served.server.route or ""


class MetricsCollector(Collector):
    """
    The proxy's own metrics (see the module docstring), for a
    C{CollectorRegistry}; a consumer of C{ledger}'s events.

    @ivar accepted: connections accepted, by route.
    @ivar sessions: datagram sessions opened, by route.
    @ivar ended: connections closed, by route and how they ended.
    @ivar moved: bytes of closed connections, by route and direction.
    @ivar sessionBytes: bytes of closed sessions, by route and direction.
    @ivar sessionDatagrams: datagrams of closed sessions, likewise.
    @ivar listening: the listeners, whose route servers count connect
        retries and dropped datagrams.
    @ivar connectTimes: accept to connected, of connections that connected.
    @ivar lifetimes: accept to close, of every connection.
    """

    def __init__(
        self, clock: IReactorTime, ledger: Ledger, limit: ConnectionLimit, listening: ListenerSet
    ) -> None:
        self.clock = clock
        self.ledger = ledger
        self.limit = limit
        self.listening = listening
        self.connectTimes = Durations(CONNECT_BUCKETS)
        self.lifetimes = Durations(DURATION_BUCKETS)
        self.accepted: Counter[str] = Counter()
        self.sessions: Counter[str] = Counter()
        self.ended: Counter[tuple[str, str]] = Counter()
        self.moved: Counter[tuple[str, str]] = Counter()
        self.sessionBytes: Counter[tuple[str, str]] = Counter()
        self.sessionDatagrams: Counter[tuple[str, str]] = Counter()

    def opened(self, served: Served) -> None:
        if served.datagrams is None:
            self.accepted[routeLabel(served)] += 1
        else:
            self.sessions[routeLabel(served)] += 1

    def closed(self, served: Served) -> None:
        route = routeLabel(served)
        datagrams = served.datagrams
        if datagrams is None:
            ending = served.ending
            self.ended[route, ENDINGS[ending] if ending is not None else "done"] += 1
            _add(self.moved, route, served.counts)
            if served.started:
                self.lifetimes.observe(route, self.clock.seconds() - served.started)
                if served.connected:
                    self.connectTimes.observe(route, served.connected - served.started)
        else:
            _add(self.sessionBytes, route, served.counts)
            _add(self.sessionDatagrams, route, datagrams)

    def collect(self) -> Iterator[Metric]:
        """
        Every metric family, with the counts of what is open now added to
        the totals of what has closed.
        """
        streams = {factory.route or "" for factory in self.listening.factories.values()}
        relays = {relay.route or "" for relay in self.listening.relays}
        active: Counter[str] = Counter(dict.fromkeys(streams | set(self.accepted), 0))
        activeSessions: Counter[str] = Counter(dict.fromkeys(relays | set(self.sessions), 0))
        accepted, sessions = Counter(active), Counter(activeSessions)
        accepted.update(self.accepted)
        sessions.update(self.sessions)
        moved, sessionBytes, sessionDatagrams = (
            _zeros(active),
            _zeros(activeSessions),
            _zeros(activeSessions),
        )
        moved.update(self.moved)
        sessionBytes.update(self.sessionBytes)
        sessionDatagrams.update(self.sessionDatagrams)
        for served in self.ledger.open:
            route = routeLabel(served)
            datagrams = served.datagrams
            if datagrams is None:
                active[route] += 1
                _add(moved, route, served.counts)
            else:
                activeSessions[route] += 1
                _add(sessionBytes, route, served.counts)
                _add(sessionDatagrams, route, datagrams)

        yield _family(
            GaugeMetricFamily, "connections_active", "Connections open now.", ["route"], active
        )
        yield _family(
            CounterMetricFamily, "connections", "Connections accepted.", ["route"], accepted
        )
        yield _family(
            CounterMetricFamily,
            "connections_closed",
            "Connections closed, by how they ended (as the close line says it).",
            ["route", "ending"],
            self.ended,
        )
        yield _family(
            CounterMetricFamily,
            "bytes",
            "Bytes moved by connections, open ones included; upstream is client to target.",
            ["route", "direction"],
            moved,
        )
        yield _family(
            GaugeMetricFamily,
            "sessions_active",
            "Datagram sessions open now.",
            ["route"],
            activeSessions,
        )
        yield _family(
            CounterMetricFamily, "sessions", "Datagram sessions opened.", ["route"], sessions
        )
        yield _family(
            CounterMetricFamily,
            "datagrams",
            "Datagrams forwarded by sessions, open ones included.",
            ["route", "direction"],
            sessionDatagrams,
        )
        yield _family(
            CounterMetricFamily,
            "datagram_bytes",
            "Bytes of the datagrams forwarded by sessions, open ones included.",
            ["route", "direction"],
            sessionBytes,
        )
        yield self.connectTimes.family(
            "socketproxyd_connect_duration_seconds",
            "Seconds from accepting a client to its target's answer.",
        )
        yield self.lifetimes.family(
            "socketproxyd_connection_duration_seconds",
            "Seconds from accepting a client to closing its connection.",
        )
        retries: Counter[str] = Counter()
        for factory in self.listening.factories.values():
            retries[factory.route or ""] += factory.connectRetries
        drops: Counter[tuple[str, str]] = Counter()
        for relay in self.listening.relays:
            for reason, count in relay.drops.items():
                drops[relay.route or "", reason] += count
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


def _zeros(routes: Counter[str]) -> Counter[tuple[str, str]]:
    """
    A zero for each direction of each of C{routes}, so that a route's
    series exist before its first client.
    """
    return Counter({(route, label): 0 for route in routes for label in DIRECTIONS.values()})


def _add(totals: Counter[tuple[str, str]], route: str, counts: list[int]) -> None:
    for direction, label in DIRECTIONS.items():
        totals[route, label] += counts[direction]


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
