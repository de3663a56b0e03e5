"""
README.rst and the manual page quote the units of examples/systemd/ as
they are (L{tests.support.docs}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support.docs import MANUAL, README, UNITS, quoted, staleQuotes, unitText


class UnitQuoteTests(SynchronousTestCase):
    def test_quotesAreTheUnits(self) -> None:
        """
        Every quote shows its unit's text, in README.rst and in the manual
        page.
        """
        for document in (README, MANUAL):
            for quote, text in quoted(document):
                self.assertTrue((UNITS / quote.unit).is_file(), quote.unit)
                self.assertEqual(text, unitText(quote.unit), f"{document.name}: {quote.unit}")
        self.assertEqual(
            staleQuotes(), [], "run python -m tests.support.docs to quote the units anew"
        )

    def test_whatIsQuoted(self) -> None:
        """
        The README quotes both forms of the simple case, the metrics socket
        and the two-route namespace case; the manual page all but the
        twistd form.
        """
        namespace = ["routes-web.socket", "routes-proxy.service"]
        simple = ["proxy-to-nginx.socket", "proxy-to-nginx.service"]
        self.assertEqual(
            [quote.unit for quote, _ in quoted(README)],
            [
                "proxy-to-nginx-metrics.socket",
                *simple,
                "proxy-to-nginx-twistd.service",
                *namespace,
            ],
        )
        self.assertEqual(
            [quote.unit for quote, _ in quoted(MANUAL)],
            [*simple, "proxy-to-nginx-metrics.socket", *namespace],
        )

    def test_leadingCommentsLeftOut(self) -> None:
        """
        A unit's leading comments are not quoted; the rest is, as it is.
        """
        text = unitText("routes-proxy.service")
        self.assertTrue(text.startswith("[Unit]\n"), text)
        self.assertIn("--connect-retry=10s", text)
        self.assertTrue((UNITS / "routes-proxy.service").read_text().startswith("# One proxy"))
