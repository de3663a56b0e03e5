"""
socketproxyd with the metrics collector's per-connection calls timed, for
C{benchmarks/profile.py metrics}: what the exporter itself costs inside the
running proxy, where caches are colder than in a loop and the difference
of two CPU measurements is lost in their noise.

    SPX_TIMED_EXPORTER=FILE python benchmarks/timedexporter.py ARGS...

runs C{socketproxyd ARGS...} with C{MetricsCollector.opened} and C{closed}
wrapped in C{time.perf_counter} reads, and at exit writes to FILE one line
per method, C{NAME CALLS MEAN_NS}, the timing's own cost taken off.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from socketproxyd.cli import main  # noqa: E402
from socketproxyd.metrics.collector import MetricsCollector  # noqa: E402

clock = time.perf_counter
spent: dict[str, list[float]] = {}


def nothing(*args: object) -> None:
    """
    The call that each timed call is compared with.
    """


def timed(name: str, method: Callable[..., None]) -> Callable[..., None]:
    """
    C{method}, adding to C{spent[name]} each call's seconds less those of
    an empty call timed right after it in the same way (what the timing
    itself costs, in the same state of the caches).
    """
    totals = spent[name] = [0, 0.0]

    def call(*args: Any) -> None:
        start = clock()
        method(*args)
        middle = clock()
        nothing(*args)
        totals[1] += (middle - start) - (clock() - middle)
        totals[0] += 1

    return call


def report(path: str) -> None:
    with open(path, "w") as out:
        for name, (calls, seconds) in spent.items():
            out.write(f"{name} {calls} {seconds / calls * 1e9 if calls else 0:.0f}\n")


if __name__ == "__main__":
    MetricsCollector.opened = timed("opened", MetricsCollector.opened)  # type: ignore[method-assign]
    MetricsCollector.closed = timed("closed", MetricsCollector.closed)  # type: ignore[method-assign]
    atexit.register(report, os.environ["SPX_TIMED_EXPORTER"])
    main()
