# -*- test-case-name: tests.unit.test_metrics -*-
"""
L{Durations}: the proxy's histograms of how long connecting and serving
took, by route, and their buckets.
"""

from __future__ import annotations

import bisect

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

CONNECT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip
"""
Seconds from accept to the target's answer: a local target answers in
well under a millisecond, a remote or retried one in seconds.
"""
DURATION_BUCKETS = (0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 14400, 86400)
"""
Seconds from accept to close: a request, a session, a day-long tunnel.
"""


class Durations:
    """
    A histogram of durations by route, counted in plain lists as each
    connection closes and laid out as Prometheus's cumulative buckets at
    scrape time (C{prometheus_client.Histogram} takes a lock and looks up
    its labels on every observation).

    @ivar bounds: the buckets' upper bounds, ascending (C{+Inf} is added).
    @ivar routes: per route, the count in each bucket (not cumulative,
        the last for C{+Inf}) and the sum.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.routes: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, route: str, seconds: float) -> None:
        """
        Count one duration of C{route}.
        """
        counted = self.routes.get(route)
        if counted is None:
            counted = self.routes[route] = ([0] * (len(self.bounds) + 1), [0.0])
        counted[0][bisect.bisect_left(self.bounds, seconds)] += 1
        counted[1][0] += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """
        The histogram C{name}, one series per route.
        """
        family = HistogramMetricFamily(name, documentation, labels=["route"])
        for route in sorted(self.routes):
            counts, total = self.routes[route]
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*map(floatToGoString, self.bounds), "+Inf"), counts, strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([route], buckets, total[0])
        return family
