"""
Tests for L{socketproxyd.tap}: the options every command shares.
"""

from __future__ import annotations

import io
import math
import os

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.target import Target
from socketproxyd.tap import Options


class OptionsTests(SynchronousTestCase):
    """
    L{Options} parses the original's options with exact semantics.
    """

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.stderr = io.StringIO()
        options.parseOptions(list(argv))
        return options

    def rejected(self, *argv: str) -> str:
        """
        Parse C{argv}, expecting exit status 1 and one line on stderr.
        """
        options = Options()
        options.stderr = io.StringIO()
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(list(argv))
        self.assertEqual(caught.exception.code, 1)
        message = options.stderr.getvalue()
        self.assertEqual(message.count("\n"), 1, message)
        self.assertTrue(message.startswith("socketproxyd: "), message)
        return message

    def test_defaults(self) -> None:
        self.patch(os, "environ", {})
        options = self.parse("127.0.0.1:80")
        self.assertEqual(options["connections-max"], 256)
        self.assertEqual(options["exit-idle-time"], math.inf)
        self.assertEqual(options["connect-timeout"], 30.0)
        self.assertEqual(options["idle-timeout"], math.inf)
        self.assertEqual(options["drain-timeout"], 0.0)
        self.assertEqual(options["listen"], [])
        self.assertEqual(options["log-level"], "info")
        self.assertEqual(options["routes"].default, Target("ipv4", "127.0.0.1", 80))
        self.assertEqual(options["routes"].named, {})
        self.assertEqual(options["connect-retry"], 0.0)
        self.assertEqual(options["pipe-size"], 256 * 1024)
        settings = options.settings()
        self.assertEqual((settings.connectRetry, settings.pipeSize), (0.0, 256 * 1024))

    def test_connectionsMaxDecimal(self) -> None:
        """
        C{-c 010} means ten, not eight as in the original.
        """
        self.assertEqual(self.parse("-c", "010", "x:1")["connections-max"], 10)
        self.assertEqual(self.parse("--connections-max=3", "x:1")["connections-max"], 3)

    def test_badConnectionsMax(self) -> None:
        for value in ["0", "-1", "abc", "0x10", "1.5", ""]:
            self.assertIn("--connections-max", self.rejected("-c", value, "x:1"))

    def test_spans(self) -> None:
        options = self.parse(
            "--exit-idle-time=5min 30s", "--connect-timeout=500ms", "--idle-timeout=1h", "x:1"
        )
        self.assertEqual(options["exit-idle-time"], 330.0)
        self.assertEqual(options["connect-timeout"], 0.5)
        self.assertEqual(options["idle-timeout"], 3600.0)

    def test_badSpan(self) -> None:
        message = self.rejected("--exit-idle-time=soon", "x:1")
        self.assertIn("--exit-idle-time='soon'", message)

    def test_target(self) -> None:
        self.assertIn("TARGET is missing", self.rejected())
        self.assertIn(
            "one TARGET expected, got 2: a:1 b:2; route named sockets to others with "
            "--target=NAME=TARGET",
            self.rejected("a:1", "b:2"),
        )
        self.assertIn("99999", self.rejected("127.0.0.1:99999"))

    def test_namedTargets(self) -> None:
        """
        C{--target=NAME=TARGET} is repeatable and split at the first C{=};
        with it the positional TARGET may be left out.
        """
        options = self.parse("--target=web=/run/a=b.sock", "--target", "db=[::1]:5432")
        self.assertEqual(
            options["routes"].named,
            {"web": Target("unix", "/run/a=b.sock"), "db": Target("ipv6", "::1", 5432)},
        )
        self.assertIsNone(options["routes"].default)
        options = self.parse("--target=web=127.0.0.1:80", "127.0.0.1:81")
        self.assertEqual(options["routes"].default, Target("ipv4", "127.0.0.1", 81))

    def test_badNamedTargets(self) -> None:
        """
        A NAME given twice, a bad NAME, a missing C{=} and a bad TARGET are
        each one line naming the option.
        """
        self.assertIn(
            "'web' has a target already", self.rejected("--target=web=a:1", "--target=web=b:2")
        )
        self.assertIn("not a listener name", self.rejected("--target==a:1"))
        self.assertIn("not a listener name", self.rejected("--target=a b=a:1"))
        self.assertIn("give NAME=TARGET", self.rejected("--target=web"))
        self.assertIn("--target=web=a:99999", self.rejected("--target=web=a:99999"))
        self.assertIn("--target=NAME=TARGET", self.rejected())

    def test_listenNames(self) -> None:
        """
        C{--listen=NAME=ENDPOINT} names the listener; an endpoint's own C{=}
        (after a C{:}) does not.
        """
        from socketproxyd.config.routes import splitListen

        self.assertEqual(splitListen("web=tcp:80:interface=::1"), ("web", "tcp:80:interface=::1"))
        self.assertEqual(splitListen("tcp:80:interface=::1"), (None, "tcp:80:interface=::1"))
        self.assertEqual(splitListen("unix:/run/a=b"), (None, "unix:/run/a=b"))
        self.assertEqual(self.parse("--listen=db=tcp:0", "x:1")["listen"], ["db=tcp:0"])
        self.assertIn("not a listener name", self.rejected("--listen==tcp:0", "x:1"))

    def test_connectRetry(self) -> None:
        self.assertEqual(self.parse("--connect-retry=5s", "x:1").settings().connectRetry, 5.0)
        self.assertIn("--connect-retry", self.rejected("--connect-retry=later", "x:1"))

    def test_pipeSize(self) -> None:
        """
        C{--pipe-size} takes bytes or K/M, from 4 KiB to fs.pipe-max-size.
        """
        from socketproxyd.config.settings import pipeMaxSize

        self.assertEqual(self.parse("--pipe-size=64K", "x:1").settings().pipeSize, 65536)
        self.assertEqual(self.parse("--pipe-size=4096", "x:1")["pipe-size"], 4096)
        self.assertEqual(self.parse("--pipe-size=16k", "x:1")["pipe-size"], 16384)
        for bad in ["4095", "0", "big", "-1", "1.5M", str(pipeMaxSize() + 1)]:
            self.assertIn("--pipe-size", self.rejected(f"--pipe-size={bad}", "x:1"))

    def test_listenRepeatable(self) -> None:
        options = self.parse("--listen=tcp:0", "--listen", "unix:/tmp/x", "x:1")
        self.assertEqual(options["listen"], ["tcp:0", "unix:/tmp/x"])

    def test_logLevel(self) -> None:
        """
        C{--log-level} wins; otherwise C{SYSTEMD_LOG_LEVEL} is honoured.
        """
        self.patch(os, "environ", {"SYSTEMD_LOG_LEVEL": "debug"})
        self.assertEqual(self.parse("x:1")["log-level"], "debug")
        self.assertEqual(self.parse("--log-level=error", "x:1")["log-level"], "error")
        self.assertIn("--log-level", self.rejected("--log-level=loud", "x:1"))

    def test_metricsTimesConnections(self) -> None:
        """
        With C{--metrics}, and only then, connections keep their times.
        """
        options = self.parse("--metrics=tcp:9105", "x:1")
        self.assertEqual(options["metrics"], "tcp:9105")
        self.assertTrue(options.settings().timesConnections)
        self.assertFalse(self.parse("x:1").settings().timesConnections)

    def test_debugLogsCloses(self) -> None:
        """
        At debug level, and only there, the settings log every close (and
        so have connections keep their addresses).
        """
        self.patch(os, "environ", {})
        self.assertTrue(self.parse("--log-level=debug", "x:1").settings().logsCloses)
        for level in ("info", "warning", "error"):
            settings = self.parse(f"--log-level={level}", "x:1").settings()
            self.assertFalse(settings.logsCloses, level)
        self.assertFalse(self.parse("x:1").settings().logsCloses)

    def test_proxyProtocol(self) -> None:
        self.assertEqual(self.parse("--proxy-protocol=v2", "x:1").settings().proxyProtocol, "v2")
        self.assertIn("--proxy-protocol", self.rejected("--proxy-protocol=v3", "x:1"))


class MakeServiceTests(SynchronousTestCase):
    """
    L{makeService} builds; the listeners open when the service starts.
    """

    def test_opensNothingUntilStarted(self) -> None:
        """
        Building reads no inherited socket and binds nothing; starting
        (C{privilegedStartService}, as twistd does) opens every listener,
        once, however the service is then started.
        """
        from twisted.internet.testing import MemoryReactorClock

        from socketproxyd import logs
        from socketproxyd.tap import makeService

        self.addCleanup(logs.setLevel, "info")
        reactor = MemoryReactorClock()
        calls = []

        def findInherited() -> list:
            calls.append("inherited")
            return []

        options = Options()
        options.stderr = io.StringIO()
        options.parseOptions(["--listen=tcp:0:interface=127.0.0.1", "127.0.0.1:80"])
        service = makeService(options, reactor, findInherited)
        self.assertEqual((calls, reactor.tcpServers), ([], []))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(calls, ["inherited"])
        self.assertEqual(len(reactor.tcpServers), 1)


class HelpTests(SynchronousTestCase):
    """
    C{--help} names the program and lists every option, C{-h} included.
    """

    def test_synopsisAndShortHelp(self) -> None:
        self.patch(os, "environ", {})
        text = str(Options())
        self.assertTrue(text.startswith("Usage: socketproxyd [OPTIONS] [TARGET]\n"), text)
        self.assertIn("-h, --help", text)
        for option in ("-c, --connections-max=N ", "--listen=[NAME=]ENDPOINT ", "--keepalive "):
            self.assertIn(option, text)
        self.assertNotRegex(text, r"=\s{2}")
        self.assertIn("[default: 256]", text)
        self.assertTrue(all(len(line) <= 80 for line in text.splitlines()), text)

    def test_widthFromColumns(self) -> None:
        """
        As Twisted's own help, the text is as wide as C{$COLUMNS}; 80 where
        it is unset or not a width.
        """
        for columns, width in [("120", 120), ("60", 60), ("wide", 80), ("0", 80)]:
            self.patch(os, "environ", {"COLUMNS": columns})
            lines = str(Options()).splitlines()
            self.assertLessEqual(max(map(len, lines)), width, columns)
            self.assertGreater(max(map(len, lines)), width - 12, columns)

    def test_underTwistd(self) -> None:
        from twisted.scripts.twistd import ServerOptions

        options = Options()
        options.parent = ServerOptions()
        self.assertEqual(
            options.getSynopsis(), "Usage: twistd [options] socketproxy [OPTIONS] [TARGET]"
        )
