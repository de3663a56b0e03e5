# -*- test-case-name: tests.unit.test_metrics -*-
"""
L{Durations}: a route's histogram of how long connecting or serving took,
and the buckets of both.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

CONNECT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""
Seconds from accept to the target's answer: a local target answers in
well under a millisecond, a remote or retried one in seconds.
"""
DURATION_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0)
"""
Seconds from accept to close: a request, a session, a day-long tunnel.
"""


class Durations:
    """
    One route's histogram of durations, counted in a plain list as each
    connection closes and laid out as Prometheus's cumulative buckets at
    scrape time (C{prometheus_client.Histogram} takes a lock and looks up
    its labels on every observation, which a close cannot afford).

    @ivar bounds: the buckets' upper bounds, ascending (C{+Inf} is added),
        floats (a duration compares with a float faster than with an int).
    @ivar counts: the count in each bucket (not cumulative, the last for
        C{+Inf}).
    @ivar total: the sum of the durations.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """
        Count one duration.
        """
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def add(self, other: Durations) -> None:
        """
        Count C{other}'s durations too (of a route served by two servers).
        """
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


def durationsFamily(
    name: str, documentation: str, routes: Mapping[str, Durations]
) -> HistogramMetricFamily:
    """
    The histogram C{name}, one series per route.
    """
    family = HistogramMetricFamily(name, documentation, labels=["route"])
    for route in sorted(routes):
        durations = routes[route]
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*map(floatToGoString, durations.bounds), "+Inf"), durations.counts, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([route], buckets, durations.total)
    return family
