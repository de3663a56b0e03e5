"""
Tests for L{socketproxyd.config.optiontext}: one text per option, the
same in C{--help}, the README and the manual page.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.optiontext import BY_NAME, OPTIONS, helpText
from socketproxyd.tap import Options
from tests.support.docs import manOptions, readmeList, staleOptions

UNTEXTED = {"help", "version"}
"""
Twisted's own options, whose texts are fixed where they are rendered.
"""


def _words(text: str) -> str:
    return " ".join(text.split())


class OptionTextTests(SynchronousTestCase):
    def test_everyOption(self) -> None:
        """
        Every option the parser takes has a text, and every text is an
        option the parser takes, with the same short name.
        """
        options = Options()
        declared = {name.removesuffix("=") for name in options.longOpt} - UNTEXTED
        self.assertEqual(declared, set(BY_NAME))
        shorts = {long: short for short, long in options.synonyms.items() if len(short) == 1}
        for text in OPTIONS:
            self.assertEqual(shorts.get(text.long), text.short, text.long)

    def test_defaultsAreTheParsers(self) -> None:
        """
        A default the texts show is the one the parser starts from, in the
        parser's words, followed at most by what it means.
        """
        options = Options()
        for text in OPTIONS:
            parsed = options.defaults.get(text.long)
            if text.placeholder is None:
                self.assertEqual((text.default, parsed), (None, 0), text.long)
            elif parsed is None:
                self.assertIn(text.default, (None, "off", "SYSTEMD_LOG_LEVEL, else info"))
            else:
                assert text.default is not None, text.long
                self.assertEqual(text.default.split(",")[0], str(parsed), text.long)

    def test_help(self) -> None:
        """
        C{--help} shows every option as it is typed, with its summary and
        default.
        """
        shown = _words(Options().getUsage(width=100))
        for text in OPTIONS:
            self.assertIn(text.spelling().removeprefix("--"), shown)
            self.assertIn(_words(helpText(text)), shown, text.long)
        self.assertNotIn("`", shown)

    def test_readmeAndManual(self) -> None:
        """
        README.rst and the manual page hold the texts as rendered.
        """
        self.assertEqual(
            staleOptions(), [], "run python -m tests.support.docs to render the option texts"
        )

    def test_rendered(self) -> None:
        """
        Each rendering holds every option's whole text and default, in
        its own markup.
        """
        readme, manual = _words(readmeList()), _words(manOptions())
        for text in OPTIONS:
            whole = _words(f"{text.summary} {text.details}")
            self.assertIn(re.sub(r"`([^`]+)`", r"``\1``", whole), readme, text.long)
            self.assertIn(f"--{text.long}", readme)
            self.assertIn(f"\\-\\-{text.long.replace('-', chr(92) + '-')}", manual)
            if text.default is not None:
                self.assertIn(f"(default: {text.default})", readme)
                self.assertIn(f"Default: {text.default}.", manual)
        self.assertNotIn("`", manual)
