"""
The example services of examples/systemd/ run with least privilege:
C{systemd-analyze security --offline=true} scores each at most 2.0
(where systemd-analyze is installed).
"""

from __future__ import annotations

import re
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.docs import UNITS

MOST = 2.0
"""
The highest exposure an example service may have ("OK" goes up to 4.9;
the issue asks for this much less).
"""


def exposure(unit: str) -> float:
    """
    The overall exposure systemd-analyze gives C{unit} of examples/systemd/.
    """
    analyzed = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", analyzed.stdout)
    if found is None:
        raise AssertionError(f"no exposure level for {unit}:\n{analyzed.stdout}{analyzed.stderr}")
    return float(found.group(1))


class ExampleSecurityTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not shutil.which("systemd-analyze"):
            raise SkipTest("systemd-analyze is not installed")
        probe = subprocess.run(
            ["systemd-analyze", "security", "--help"], capture_output=True, text=True, timeout=60
        )
        if "--offline" not in probe.stdout:
            raise SkipTest("this systemd-analyze cannot analyze unit files offline")

    def test_everyServiceScoresLow(self) -> None:
        """
        Every example service's exposure is at most L{MOST}.
        """
        services = sorted(path.name for path in UNITS.glob("*.service"))
        self.assertGreaterEqual(len(services), 3)
        scores = {service: exposure(service) for service in services}
        self.assertEqual({s: v for s, v in scores.items() if v > MOST}, {}, scores)
