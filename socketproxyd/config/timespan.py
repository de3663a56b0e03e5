# -*- test-case-name: tests.unit.test_timespan -*-
"""
systemd time spans (systemd.time(7)), the unit of every duration option.
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {}
for _names, _seconds in [
    (("us", "usec", "µs", "μs"), 1e-6),
    (("ms", "msec"), 1e-3),
    (("s", "sec", "second", "seconds"), 1.0),
    (("m", "min", "minute", "minutes"), 60.0),
    (("h", "hr", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 7 * 86400.0),
    (("M", "month", "months"), 30.44 * 86400.0),
    (("y", "year", "years"), 365.25 * 86400.0),
]:
    for _name in _names:
        _UNITS[_name] = _seconds

_COMPONENT = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Zµμ]*)")


def parseTimespan(text: str) -> float:
    """
    Parse a systemd time span into seconds, C{math.inf} for C{infinity}.

    A bare number means seconds; components add up (C{"5min 30s"}).

    @raise ValueError: with a message naming the value, for anything else
        (empty, negative, unknown unit).
    """
    stripped = text.strip()
    if stripped == "infinity":
        return math.inf
    if not stripped:
        raise ValueError("empty time span")
    total = 0.0
    position = 0
    while position < len(stripped):
        match = _COMPONENT.match(stripped, position)
        if match is None:
            raise ValueError(f"invalid time span {text!r}")
        number, unit = match.groups()
        if unit not in _UNITS and unit != "":
            raise ValueError(f"invalid time span {text!r}: unknown unit {unit!r}")
        total += float(number) * _UNITS.get(unit, 1.0)
        position = match.end()
    return total


def formatTimespan(seconds: float) -> str:
    """
    Render seconds the way systemd would accept them back, for log lines.
    """
    if math.isinf(seconds):
        return "infinity"
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
