# -*- test-case-name: tests.unit.test_metrics -*-
"""
The buckets of the histograms of how long connecting and serving took,
and their exposition. A route's histogram is counted in a plain list as
each connection closes (L{socketproxyd.metrics.collector}) and laid out
as Prometheus's cumulative buckets at scrape time:
C{prometheus_client.Histogram} takes a lock and looks up its labels on
every observation, which a close cannot afford.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

CONNECT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""
Seconds from accept to the target's answer: a local target answers in
well under a millisecond, a remote or retried one in seconds. Floats: a
duration compares with a float faster than with an int.
"""
DURATION_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0)
"""
Seconds from accept to close: a request, a session, a day-long tunnel.
"""


def durationsFamily(
    name: str,
    documentation: str,
    bounds: tuple[float, ...],
    routes: Mapping[str, tuple[list[int], float]],
) -> HistogramMetricFamily:
    """
    The histogram C{name} with buckets up to C{bounds} (and C{+Inf}), one
    series per route of C{routes}: each route's count in each bucket (not
    cumulative, the last for C{+Inf}) and the sum of its durations.
    """
    family = HistogramMetricFamily(name, documentation, labels=["route"])
    labels = (*map(floatToGoString, bounds), "+Inf")
    for route in sorted(routes):
        counts, total = routes[route]
        cumulative, buckets = 0, []
        for bound, count in zip(labels, counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([route], buckets, total)
    return family
