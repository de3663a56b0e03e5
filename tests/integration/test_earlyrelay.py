"""
The console script's first clients, waiting in the backlog when it starts
(as under socket activation): the early relay serves them while Twisted
loads, and the proxy takes them over with nothing lost, duplicated or
reordered. Each exchange is made to straddle the hand-over: the test lets
it finish only once the proxy has said READY=1, which it does once Twisted
has loaded and just before it takes the relay's connections over.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading

from tests.support.processes import ConsoleScriptTestCase, NotifyListener, ProxyProcess
from tests.support.sockets import (
    TIMEOUT,
    Backend,
    echo,
    listeningSocket,
    pattern,
    recvAll,
    replyAfterEof,
    sendPattern,
    unixPath,
)

MiB = 1 << 20
TAKEOVER = re.compile(
    r"Took over (\d+) connection\(s\) from the early relay after \d+ ms, "
    r"with (\d+) bytes sent to the target and (\d+) to clients"
)


class EarlyClientFixture(ConsoleScriptTestCase):
    """
    A listener clients connect to before the console script starts on it.
    """

    def setUp(self) -> None:
        super().setUp()
        self.notify = NotifyListener(self)
        self.listener, self.address = listeningSocket(self, "ipv4")

    def waitingClient(self) -> socket.socket:
        """
        A client connected to the listener before the proxy runs: it
        waits in the backlog.
        """
        host, port = self.address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        return sock

    def launch(self, target: str, *args: str) -> ProxyProcess:
        assert self.command is not None
        command = [*self.command, "--log-level=debug", *args, target]
        proxy = ProxyProcess(
            self, command, [self.listener], env={"NOTIFY_SOCKET": self.notify.address}
        )
        self.listener.close()
        return proxy

    def takeover(self, proxy: ProxyProcess) -> tuple[int, int, int]:
        """
        Stop the proxy (exit 0); how many connections it took over from
        the early relay, and the bytes the relay had moved each way.
        """
        self.assertEqual(proxy.stop(), 0)
        found = TAKEOVER.search(proxy.stderr)
        assert found is not None, proxy.stderr
        self.assertNotIn("Traceback", proxy.stderr)
        count, upstream, downstream = found.groups()
        return int(count), int(upstream), int(downstream)


class EarlyClientTests(EarlyClientFixture):
    """
    Clients connected before the proxy starts, on a TCP target.
    """

    backendKind = "ipv4"

    def test_transferStraddlesTheHandOver(self) -> None:
        """
        A 32 MiB upload and a 32 MiB download that begin before the
        hand-over and end after it arrive whole (SHA-256 equal both ways).
        """
        size = 32 * MiB
        ready = threading.Event()

        def exchange(conn: socket.socket) -> tuple[str, int]:
            sender = threading.Thread(target=lambda: sendPattern(conn, 2, size, shutdown=False))
            sender.start()
            digest = hashlib.sha256()
            digest.update(recvAll(conn, MiB))
            ready.wait(TIMEOUT)
            total = MiB
            while data := conn.recv(1 << 18):
                digest.update(data)
                total += len(data)
            sender.join(TIMEOUT)
            return digest.hexdigest(), total

        backend = Backend(self, exchange, self.backendKind)
        client = self.waitingClient()
        proxy = self.launch(backend.address)
        uploaded: dict[str, str] = {}
        uploader = threading.Thread(
            target=lambda: uploaded.update(sha=sendPattern(client, 1, size))
        )
        uploader.start()
        self.notify.waitFor("READY=1")
        ready.set()
        digest, received = hashlib.sha256(), 0
        while received < size and (data := client.recv(1 << 18)):
            digest.update(data)
            received += len(data)
        uploader.join(TIMEOUT)
        self.assertTrue(backend.waitFor(lambda: backend.results))
        expected = hashlib.sha256()
        source = pattern(2, size)
        while chunk := source():
            expected.update(chunk)
        self.assertEqual((digest.hexdigest(), received), (expected.hexdigest(), size))
        self.assertEqual(backend.results[0], (uploaded["sha"], size))
        count, upstream, downstream = self.takeover(proxy)
        self.assertEqual(count, 1)
        self.assertTrue(0 < upstream < size, upstream)
        self.assertLess(downstream, size)

    def test_halfCloseBeforeTheHandOver(self) -> None:
        """
        A client that sends its request and its end of stream before the
        proxy runs gets the whole reply, and the connection ends done.
        """
        backend = Backend(self, replyAfterEof, self.backendKind)
        client = self.waitingClient()
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        proxy = self.launch(backend.address)
        self.assertEqual(recvAll(client), b"REPLY:request")
        self.notify.waitFor("READY=1")
        self.assertEqual(self.takeover(proxy)[0], 1)
        self.assertRegex(proxy.stderr, r"7 bytes up, 13 bytes down, [0-9.]+s, done")

    def test_resetBeforeTheHandOver(self) -> None:
        """
        A backend that resets before the hand-over (it closes with a byte
        unread) resets the client; the proxy, stopped at once after, exits
        0.
        """
        backend = Backend(self, lambda conn: conn.recv(1), self.backendKind)
        client = self.waitingClient()
        client.sendall(b"xy")
        proxy = self.launch(backend.address)
        with self.assertRaises(ConnectionResetError):
            recvAll(client)
        self.assertEqual(backend.results, [b"x"])
        self.assertEqual(self.takeover(proxy)[0], 1)
        self.assertRegex(proxy.stderr, r"2 bytes up, 0 bytes down, [0-9.]+s, reset")

    def test_connectionsMaxWithThreeWaiting(self) -> None:
        """
        At C{-c 1}, three clients waiting at the start are served one
        after the other, each its own reply.
        """
        backend = Backend(self, echo, self.backendKind)
        clients = [self.waitingClient() for _ in range(3)]
        for number, client in enumerate(clients):
            client.sendall(b"client %d" % number)
            client.shutdown(socket.SHUT_WR)
        proxy = self.launch(backend.address, "-c", "1")
        for number, client in enumerate(clients):
            self.assertEqual(recvAll(client), b"client %d" % number)
        self.assertTrue(backend.waitFor(lambda: len(backend.results) == 3))
        self.assertEqual(self.takeover(proxy)[0], 1)


class EarlyClientUnixTargetTests(EarlyClientTests):
    """
    The same on a UNIX-socket target.
    """

    backendKind = "unix"


class EarlyRefusalTests(EarlyClientFixture):
    """
    A target that is not there at the start: the relay hands the client
    over unconnected, and the proxy waits for the target as it does for any
    client (C{--connect-retry}).
    """

    def test_missingTargetRetried(self) -> None:
        """
        A UNIX target that appears only after the hand-over is waited for
        and reached.
        """
        path = unixPath(self, "late.sock")
        client = self.waitingClient()
        client.sendall(b"ping")
        client.shutdown(socket.SHUT_WR)
        proxy = self.launch(path, "--connect-retry=20s")
        self.notify.waitFor("READY=1")
        backend = socket.socket(socket.AF_UNIX)
        self.addCleanup(backend.close)
        backend.bind(path)
        backend.listen(1)
        backend.settimeout(TIMEOUT)
        conn, _ = backend.accept()
        with conn:
            self.assertEqual(recvAll(conn), b"ping")
            conn.sendall(b"pong")
        self.assertEqual(recvAll(client), b"pong")
        self.assertEqual(self.takeover(proxy), (1, 0, 0))
        self.assertIn("is not ready", proxy.stderr)

    def test_refusingTargetWarned(self) -> None:
        """
        A target that refuses, without retries: the client is closed and
        the warning names the refusal, as for any client.
        """
        closed, target = listeningSocket(self, "ipv4")
        closed.close()
        client = self.waitingClient()
        proxy = self.launch(target)
        self.assertEqual(recvAll(client), b"")
        self.notify.waitFor("READY=1")
        self.assertEqual(self.takeover(proxy), (1, 0, 0))
        self.assertIn(f"Failed to connect to {target}", proxy.stderr)
