"""
Bad input under every command: one line on stderr that says what is wrong,
exit status 1, never a traceback.
"""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.processes import ProxyProcess, commands
from tests.support.sockets import listeningSocket, unixPath


class BadInputScenarios:
    """
    The bad-input matrix of the core issue.
    """

    command: list[str]

    def setUp(self) -> None:
        if not self.command:
            raise SkipTest("command not installed")

    def assertRejected(self, args: list[str], *words: str, listeners=(), **kwargs: object) -> None:
        process = ProxyProcess(self, [*self.command, *args], listeners, **kwargs)
        for sock in listeners:
            if not isinstance(sock, int):
                sock.close()
        status = process.wait()
        output = process.stdout + process.stderr
        self.assertEqual(status, 1, output)
        self.assertNotIn("Traceback", output)
        lines = process.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, process.stderr)
        for word in words:
            self.assertIn(word, lines[0])

    def test_missingTarget(self) -> None:
        self.assertRejected([], "TARGET is missing")

    def test_extraTarget(self) -> None:
        self.assertRejected(["127.0.0.1:1", "127.0.0.1:2"], "one TARGET")

    def test_badConnectionsMax(self) -> None:
        for value in ["0", "-1", "abc"]:
            self.assertRejected(["-c", value, "127.0.0.1:1"], "--connections-max")

    def test_badSpan(self) -> None:
        self.assertRejected(["--exit-idle-time=abc", "127.0.0.1:1"], "--exit-idle-time")

    def test_badTarget(self) -> None:
        self.assertRejected(["127.0.0.1:99999"], "99999")

    def test_badListen(self) -> None:
        """
        A bad C{--listen} says what is wrong in the proxy's words, not
        Python's.
        """
        for listen, words in [
            ("tcp:abc", ("--listen=tcp:abc: not a server endpoint", "tcp:8080")),
            ("foo:1", ("unknown type 'foo'",)),
            ("udp:99999", ("not a datagram endpoint",)),
        ]:
            self.assertRejected([f"--listen={listen}", "127.0.0.1:1"], *words)

    def test_badMetrics(self) -> None:
        """
        A bad C{--metrics} endpoint is refused before any listener opens;
        one that cannot listen says why.
        """
        path = unixPath(self, "proxied.sock")
        for metrics, words in [
            ("foo:1", ("--metrics=foo:1: not a server endpoint", "unknown type 'foo'")),
            ("tcp:abc", ("--metrics=tcp:abc: not a server endpoint", "tcp:9105")),
        ]:
            self.assertRejected(
                [f"--metrics={metrics}", f"--listen=unix:{path}", "127.0.0.1:1"], *words
            )
            self.assertFalse(os.path.exists(path), metrics)
        taken, address = listeningSocket(self, "ipv4")
        port = address.rpartition(":")[2]
        metrics = f"--metrics=tcp:{port}:interface=127.0.0.1"
        self.assertRejected(
            [metrics, f"--listen=unix:{path}", "127.0.0.1:1"], f"{metrics}: cannot listen"
        )

    def test_badMetricsName(self) -> None:
        """
        C{--metrics=NAME} needs an inherited stream socket of that name
        that no C{--target} routes.
        """
        web, _ = listeningSocket(self, "ipv4")
        self.assertRejected(
            ["--metrics=nope", "127.0.0.1:1"],
            "--metrics=nope: no inherited socket is named 'nope' (socket names: web)",
            "FileDescriptorName=nope",
            listeners=[web],
            fdnames=["web"],
        )
        web, _ = listeningSocket(self, "ipv4")
        self.assertRejected(
            ["--metrics=web", "--target=web=127.0.0.1:2", "127.0.0.1:1"],
            "--metrics=web: the sockets named 'web' are routed by --target=web=",
            listeners=[web],
            fdnames=["web"],
        )

    def test_noSockets(self) -> None:
        self.assertRejected(["127.0.0.1:1"], "no listening socket", "--listen")

    def test_otherProcess(self) -> None:
        sock, _ = listeningSocket(self, "ipv4")
        self.assertRejected(["127.0.0.1:1"], "process 1", listeners=[sock], listenPid="1")

    def test_seqpacketSocket(self) -> None:
        seqpacket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(seqpacket.close)
        self.assertRejected(["127.0.0.1:1"], "fd 3", "seqpacket", listeners=[seqpacket])

    def test_notListening(self) -> None:
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        self.assertRejected(["127.0.0.1:1"], "fd 3", "not listening", listeners=[sock])

    def test_listenCannotBind(self) -> None:
        sock, address = listeningSocket(self, "ipv4")
        port = address.rsplit(":", 1)[1]
        self.assertRejected(
            [f"--listen=tcp:{port}:interface=127.0.0.1", "127.0.0.1:1"], "--listen", port
        )

    def test_malformedListen(self) -> None:
        self.assertRejected(["--listen=bogus:1", "127.0.0.1:1"], "--listen=bogus:1")


for _name, _command in commands().items():
    _suffix = _name.replace(" ", "_").replace("-", "")
    globals()[f"BadInputTests_{_suffix}"] = type(
        f"BadInputTests_{_suffix}", (BadInputScenarios, SynchronousTestCase), {"command": _command}
    )
