"""
Tests for L{socketproxyd.config.timespan}.
"""

import math

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.timespan import formatTimespan, parseTimespan


class ParseTimespanTests(SynchronousTestCase):
    """
    L{parseTimespan} reads systemd time spans as systemd.time(7) defines them.
    """

    def test_spans(self) -> None:
        """
        Bare numbers are seconds; units and sums of components work.
        """
        cases = {
            "90": 90.0,
            "1.5": 1.5,
            "500ms": 0.5,
            "1.5s": 1.5,
            "5min 30s": 330.0,
            "5min30s": 330.0,
            "2h": 7200.0,
            "1d": 86400.0,
            "250us": 0.00025,
            " 3 s ": 3.0,
            "0": 0.0,
        }
        for text, seconds in cases.items():
            self.assertAlmostEqual(parseTimespan(text), seconds, msg=text)

    def test_infinity(self) -> None:
        self.assertEqual(parseTimespan("infinity"), math.inf)

    def test_invalid(self) -> None:
        """
        Empty, negative, unknown units and garbage are rejected with a
        message naming the value.
        """
        for text in ["", "-1", "abc", "5 parsecs", "1s-", "infinite", "1..2"]:
            with self.assertRaises(ValueError, msg=text) as caught:
                parseTimespan(text)
            self.assertTrue(str(caught.exception), text)

    def test_format(self) -> None:
        self.assertEqual(formatTimespan(math.inf), "infinity")
        self.assertEqual(formatTimespan(30), "30s")
        self.assertEqual(formatTimespan(0.25), "250ms")
