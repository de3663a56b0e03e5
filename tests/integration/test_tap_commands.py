"""
The command line as subprocesses see it: the manual page rendered by man(1)
and what the console script imports before its first client.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd.tap import Options
from tests.support.processes import MANUAL


class ManualTests(SynchronousTestCase):
    """
    The manual page, man/socketproxyd.8, describes exactly the options
    C{--help} lists, and every TARGET form.
    """

    def test_optionsInStep(self) -> None:
        page = MANUAL.read_text()
        section = page.split(".SH OPTIONS", 1)[1].split("\n.SH ", 1)[0]
        documented = {m.replace("\\-", "-") for m in re.findall(r"\\-\\-((?:[a-z]|\\-)+)", section)}
        options = Options()
        names = {p[0] for p in options.optParameters + options.optFlags}
        names |= {"listen", "target", "accept-proxy-protocol", "version", "help"}
        self.assertEqual(documented, names)
        for form in ("/path/to/socket", "@name", "[v6addr]:PORT", "v4addr:PORT", "host:PORT"):
            self.assertIn(form, page)
        for heading in ("EXIT STATUS", "SIGNALS", "NOTIFY PROTOCOL", "EXAMPLES"):
            self.assertIn(f".SH {heading}", page)

    def test_rendersWithoutWarnings(self) -> None:
        """
        C{man -l} renders the page with groff's warnings on and gives none.
        """
        if shutil.which("man") is None:
            raise SkipTest("man is not installed")
        done = subprocess.run(
            ["man", "--warnings", "-E", "UTF-8", "-l", str(MANUAL)],
            env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "LC_ALL": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertIn("socketproxyd", done.stdout)
        self.assertIn("--connections-max", done.stdout.replace("\u2010", "-"))


class ImportTests(SynchronousTestCase):
    """
    What the console script imports before its first client (issue 10):
    nothing a stream-only proxy does not use.
    """

    def test_nothingHeavyBeforeTheEarlyRelay(self) -> None:
        """
        Until the early relay has served the first clients, the console
        script imports no Twisted, and none of the standard library's
        costlier modules (issue 19).
        """
        code = (
            "import sys; before = set(sys.modules); import socketproxyd.cli; "
            "print(sorted(set(sys.modules) - before))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        loaded = ast.literal_eval(done.stdout)
        self.assertIn("socketproxyd.stream.earlyrelay", loaded)
        heavy = [
            name
            for name in loaded
            if name.split(".")[0]
            in (
                "twisted",
                "zope",
                "attr",
                "typing",
                "dataclasses",
                "re",
                "ipaddress",
                "asyncio",
                "socket",
                "signal",
                "threading",
                "enum",
                "collections",
                "struct",
            )  # fmt: skip
        ]
        self.assertEqual(heavy, [])

    def test_noDatagramModules(self) -> None:
        code = (
            "import sys, socketproxyd.cli, socketproxyd.tap; "
            "print(sorted(m for m in sys.modules if m.startswith('socketproxyd.')))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        loaded = done.stdout
        self.assertIn("'socketproxyd.service.opening'", loaded)
        self.assertNotIn("'socketproxyd.datagram.relay'", loaded)
        self.assertNotIn("'socketproxyd.datagram.session'", loaded)
