"""
Routes and a backend that is still starting, end to end: the proxy
started by the socket-activation launcher with named sockets, real
backends, real clients.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from tests.support.processes import ConsoleScriptTestCase, NotifyListener, commands
from tests.support.sockets import (
    Backend,
    connect,
    halfClosePing,
    recvAll,
    replyAfterEof,
    unixPath,
    waitListening,
)


def tagged(tag: bytes) -> Callable[[socket.socket], int]:
    """
    A backend handler that answers what the client sent, after its end of
    stream, prefixed with C{tag}: which backend answered shows.
    """

    def handle(conn: socket.socket) -> int:
        data = recvAll(conn)
        conn.sendall(tag + data)
        conn.shutdown(socket.SHUT_WR)
        return len(data)

    return handle


class RoutingTests(ConsoleScriptTestCase):
    """
    Each named socket's connections go to their own backend.
    """

    def routes(self) -> tuple[dict[str, Backend], list[str]]:
        backends = {
            "web": Backend(self, tagged(b"web:"), "unix"),
            "db": Backend(self, tagged(b"db:"), "ipv4"),
            "other": Backend(self, tagged(b"other:"), "ipv6"),
        }
        return backends, [f"--target={name}={backends[name].address}" for name in ("web", "db")]

    def test_threeNamedSockets(self) -> None:
        """
        Sockets named web, db and other, the first two with a C{--target}
        and the third served by TARGET, all used at once: every client gets
        its own bytes back from its route's backend, each backend counts
        exactly its route's bytes, and every close line names its route.
        """
        backends, options = self.routes()
        proxy, addresses = self.startProxy(
            backends["other"].address,
            *options,
            "--log-level=debug",
            listeners=("ipv4", "ipv6", "unix"),
            fdnames=["web", "db", "other"],
        )
        replies: dict[tuple[str, int], bytes] = {}

        def client(name: str, address: str, n: int) -> None:
            payload = f"{name} request {n} ".encode() * (n + 1)
            replies[name, n] = halfClosePing(address, payload) == name.encode() + b":" + payload

        threads = [
            threading.Thread(target=client, args=(name, address, n))
            for n in range(5)
            for name, address in zip(("web", "db", "other"), addresses, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(len(replies), 15)
        self.assertTrue(all(replies.values()), replies)
        for name, backend in backends.items():
            self.assertTrue(backend.waitFor(lambda b=backend: len(b.results) == 5))
            expected = sorted(len(f"{name} request {n} ".encode() * (n + 1)) for n in range(5))
            self.assertEqual(sorted(backend.results), expected)
        self.assertEqual(proxy.stop(), 0)
        output = proxy.stdout + proxy.stderr
        closeLines = [line for line in output.splitlines() if "bytes up" in line]
        self.assertEqual(len(closeLines), 15, output)
        for name, backend in backends.items():
            mine = [line for line in closeLines if f"{name}: " in line]
            self.assertEqual(len(mine), 5, closeLines)
            self.assertTrue(all(f"-> {backend.address}: " in line for line in mine), mine)
        self.assertIn(f"(fd 3 (web, IPv4)) for {backends['web'].address}", output)

    def test_sameNameOnTwoSockets(self) -> None:
        """
        systemd may give two sockets one name: both follow its route, and
        no positional TARGET is needed.
        """
        backends, options = self.routes()
        proxy, addresses = self.startProxy(
            None, options[0], listeners=("ipv4", "ipv6"), fdnames=["web", "web"]
        )
        for address in addresses:
            self.assertEqual(halfClosePing(address, b"x"), b"web:x")

    def test_listenRoute(self) -> None:
        """
        C{--listen=NAME=ENDPOINT} names a listener of the proxy's own.
        """
        backends, options = self.routes()
        path = unixPath(self, "api.sock")
        proxy, [address] = self.startProxy(
            backends["other"].address,
            f"--target=api={backends['db'].address}",
            f"--listen=api=unix:{path}",
            fdnames=["web"],
        )
        self.assertTrue(waitListening(path), f"nothing listens on {path}")
        self.assertEqual(halfClosePing(path, b"x"), b"db:x")
        self.assertEqual(halfClosePing(address, b"y"), b"other:y")

    def startupError(self, target: str | None, *args: str, fdnames: list[str]) -> str:
        proxy, _ = self.startProxy(
            target, *args, listeners=("ipv4",) * len(fdnames), fdnames=fdnames
        )
        self.assertEqual(proxy.wait(), 1)
        lines = proxy.stderr.splitlines()
        self.assertEqual(len(lines), 1, proxy.stderr)
        self.assertNotIn("Traceback", proxy.stderr)
        return lines[0]

    def test_startupErrors(self) -> None:
        """
        A listener no route serves, a C{--target} NAME no listener has, and
        a NAME given twice: each one line and exit status 1.
        """
        self.assertEqual(
            self.startupError(None, "--target=web=127.0.0.1:1", fdnames=["web", "db"]),
            "socketproxyd: fd 4 (db, IPv4) has no target: give TARGET, or --target=db=TARGET",
        )
        self.assertEqual(
            self.startupError("127.0.0.1:1", "--target=api=127.0.0.1:2", fdnames=["web"]),
            "socketproxyd: --target=api=...: no listener is named 'api' (listener names: web)",
        )
        self.assertIn(
            "'web' has a target already",
            self.startupError(
                None, "--target=web=127.0.0.1:1", "--target=web=127.0.0.1:2", fdnames=["web"]
            ),
        )

    def test_statusPerName(self) -> None:
        """
        STATUS gives the total and the count per name.
        """
        backends, options = self.routes()
        notify = NotifyListener(self)
        proxy, addresses = self.startProxy(
            backends["other"].address,
            *options,
            listeners=("ipv4", "ipv4", "ipv4"),
            fdnames=["web", "db", "other"],
            env={"NOTIFY_SOCKET": notify.address},
        )
        notify.waitFor("READY=1")
        with connect(addresses[0]) as held:
            held.sendall(b"x")
            self.assertTrue(backends["web"].waitFor(lambda: backends["web"].accepted == 1))
            notify.waitFor("STATUS=1 connection open (at most 256): db 0, other 0, web 1")


class TwistdRoutingTests(RoutingTests):
    command = commands()["twistd"]


def serveLater(
    testcase: object, delay: float, listen: Callable[[], socket.socket]
) -> threading.Thread:
    """
    A backend that starts listening C{delay} seconds from now (C{listen}
    makes its socket) and answers one client with L{replyAfterEof}.
    """

    def run() -> None:
        time.sleep(delay)
        sock = listen()
        conn, _ = sock.accept()
        with conn, sock:
            conn.settimeout(30)
            replyAfterEof(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    testcase.addCleanup(thread.join, 35)
    return thread


class ConnectRetryTests(ConsoleScriptTestCase):
    """
    With C{--connect-retry}, clients wait for a backend that is starting.
    """

    def request(self, address: str) -> tuple[bytes, float]:
        """
        Send a request and the end of stream; the answer and how long it
        took.
        """
        started = time.monotonic()
        with connect(address) as client:
            client.sendall(b"request")
            client.shutdown(socket.SHUT_WR)
            try:
                answer = recvAll(client)
            except ConnectionResetError:
                answer = b"<reset>"
        return answer, time.monotonic() - started

    def test_unixBackendAppearsLate(self) -> None:
        """
        A UNIX-socket backend that appears 2 s after the client sent its
        request gets the request, and the client the whole answer.
        """
        path = unixPath(self, "late.sock")

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path)
            sock.listen()
            return sock

        proxy, address = self.start(path, "--connect-retry=5s")
        serveLater(self, 2.0, listen)
        answer, elapsed = self.request(address)
        self.assertEqual(answer, b"REPLY:request")
        self.assertGreater(elapsed, 1.9)
        self.assertEqual(proxy.stop(), 0)
        self.assertEqual(proxy.stderr.count("is not ready"), 1, proxy.stderr)

    def test_tcpBackendListensLate(self) -> None:
        """
        The same with a TCP backend whose port is bound but not yet
        listening (it refuses) for 2 s.
        """
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))

        def listen() -> socket.socket:
            sock.listen()
            return sock.dup()

        proxy, address = self.start(f"127.0.0.1:{sock.getsockname()[1]}", "--connect-retry=5s")
        serveLater(self, 2.0, listen)
        answer, elapsed = self.request(address)
        self.assertEqual(answer, b"REPLY:request")
        self.assertGreater(elapsed, 1.9)

    def test_withoutTheOption(self) -> None:
        """
        Without C{--connect-retry} a missing backend closes the client at
        once, as before.
        """
        proxy, address = self.start(unixPath(self, "missing.sock"))
        answer, elapsed = self.request(address)
        self.assertIn(answer, (b"", b"<reset>"))
        self.assertLess(elapsed, 1.0)

    def test_neverComes(self) -> None:
        """
        A backend that never comes: the client is closed after about the
        span, and the proxy says so.
        """
        proxy, address = self.start(unixPath(self, "never.sock"), "--connect-retry=5s")
        answer, elapsed = self.request(address)
        self.assertIn(answer, (b"", b"<reset>"))
        self.assertTrue(4.9 < elapsed < 7.0, elapsed)
        self.assertEqual(proxy.stop(), 0)
        self.assertEqual(proxy.stderr.count("is not ready"), 1, proxy.stderr)
        self.assertEqual(proxy.stderr.count("Failed to connect"), 1, proxy.stderr)


class TransportConnectRetryTests(ConnectRetryTests):
    options = ("--data-path=transport",)
