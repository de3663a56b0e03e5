"""
The proxy run as a production service: sd_notify and the watchdog, the
connect timeout, stopping with and without a drain, running out of file
descriptors, and a bounded soak.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

from twisted.trial.unittest import SkipTest

from tests.support.processes import ConsoleScriptTestCase, NotifyListener, cpuSeconds
from tests.support.sockets import Backend, connect, echo, ping, recvAll, replyAfterEof, waitUntil

headerV2Signature = b"\r\n\r\n\x00\r\nQUIT\n"


MiB = 1 << 20


class NotifyTests(ConsoleScriptTestCase):
    """
    READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 over a real NOTIFY_SOCKET.
    """

    def test_readyStatusStopping(self) -> None:
        notify = NotifyListener(self)
        backend = Backend(self, echo)
        proxy, address = self.start(backend.address, env={"NOTIFY_SOCKET": notify.address})
        notify.waitFor("READY=1")
        self.assertEqual(ping(address), b"ping")
        with connect(address) as held:
            held.sendall(b"x")
            self.assertEqual(held.recv(1), b"x")
            notify.waitFor("STATUS=1 connection open (at most 256)")
        proxy.popen.send_signal(signal.SIGTERM)
        notify.waitFor("STOPPING=1")
        self.assertEqual(proxy.wait(), 0)

    def test_abstractSocketAndWatchdog(self) -> None:
        """
        With WATCHDOG_USEC=400000, WATCHDOG=1 comes every 0.2 s.
        """
        notify = NotifyListener(self, abstract=True)
        proxy, address = self.start(
            "127.0.0.1:9", env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"}
        )
        notify.waitFor("READY=1")
        pings = [at for at, m in notify.collect(2.0) if "WATCHDOG=1" in m.split("\n")]
        self.assertTrue(7 <= len(pings) <= 12, pings)
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        self.assertLess(max(gaps), 0.4, gaps)

    def test_watchdogForAnotherPid(self) -> None:
        notify = NotifyListener(self)
        proxy, address = self.start(
            "127.0.0.1:9",
            env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"},
        )
        notify.waitFor("READY=1")
        self.assertEqual([m for _, m in notify.collect(0.5) if "WATCHDOG" in m], [])


class ConnectTimeoutTests(ConsoleScriptTestCase):
    """
    A target that never answers (its backlog is full, so SYNs are dropped)
    closes the client within the connect timeout plus a small margin.
    """

    def test_fullBacklog(self) -> None:
        target = socket.socket()
        self.addCleanup(target.close)
        target.bind(("127.0.0.1", 0))
        target.listen(0)
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.setblocking(False)
            try:
                filler.connect(target.getsockname())
            except BlockingIOError:
                pass
            fillers.append(filler)
        host, port = target.getsockname()
        proxy, address = self.start(f"{host}:{port}", "--connect-timeout=1s")
        with connect(address) as client:
            started = time.monotonic()
            try:
                outcome = recvAll(client)
            except ConnectionResetError:
                outcome = b""
            elapsed = time.monotonic() - started
        self.assertEqual(outcome, b"")
        self.assertTrue(0.9 <= elapsed < 2.5, elapsed)
        self.assertTrue(proxy.running())


def slowStream(conn: socket.socket) -> int:
    """
    Send 4 MiB in 64 chunks a few milliseconds apart (about a second), then
    close.
    """
    conn.recv(100)
    for i in range(64):
        conn.sendall(bytes([i]) * 65536)
        time.sleep(0.015)
    return 64


class StopTests(ConsoleScriptTestCase):
    """
    SIGTERM stops accepting at once; with a drain timeout a transfer in
    flight completes, without one the stop is immediate.
    """

    def transferDuringStop(self, *args: str) -> tuple[bytes, int, float]:
        backend = Backend(self, slowStream)
        proxy, address = self.start(backend.address, *args)
        with connect(address) as client:
            client.sendall(b"go")
            first = client.recv(65536)
            proxy.popen.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            try:
                rest = recvAll(client)
            except ConnectionResetError:
                rest = b""
        status = proxy.wait()
        return first + rest, status, time.monotonic() - signalled

    def test_drainCompletesTransfer(self) -> None:
        data, status, elapsed = self.transferDuringStop("--drain-timeout=5s")
        self.assertEqual(status, 0)
        self.assertEqual(len(data), 64 * 65536)
        self.assertEqual(data, b"".join(bytes([i]) * 65536 for i in range(64)))

    def test_immediateByDefault(self) -> None:
        data, status, elapsed = self.transferDuringStop()
        self.assertEqual(status, 0)
        self.assertLess(len(data), 64 * 65536)
        self.assertLess(elapsed, 2.0)

    def test_drainTimeoutBounds(self) -> None:
        """
        A transfer longer than the drain timeout is cut at the deadline.
        """
        data, status, elapsed = self.transferDuringStop("--drain-timeout=200ms")
        self.assertEqual(status, 0)
        self.assertLess(len(data), 64 * 65536)
        self.assertLess(elapsed, 2.0)

    def assertSecondSignalEndsTheDrain(self, second: signal.Signals) -> None:
        """
        C{second} during a drain closes what is left at once, says so, and
        the proxy exits 0 with no error line.
        """
        backend = Backend(self, slowStream)
        notify = NotifyListener(self)
        proxy, address = self.start(
            backend.address, "--drain-timeout=30s", env={"NOTIFY_SOCKET": notify.address}
        )
        with connect(address) as client:
            client.sendall(b"go")
            client.recv(65536)
            proxy.popen.send_signal(signal.SIGTERM)
            notify.waitFor("STOPPING=1")
            signalled = time.monotonic()
            proxy.popen.send_signal(second)
            try:
                recvAll(client)
            except ConnectionResetError:
                pass
        self.assertEqual(proxy.wait(), 0)
        self.assertLess(time.monotonic() - signalled, 10.0)
        self.assertIn("Stopping now: closing 1 connections", proxy.stderr)
        self.assertNotIn("ReactorNotRunning", proxy.stderr)

    def test_secondSigtermEndsTheDrain(self) -> None:
        self.assertSecondSignalEndsTheDrain(signal.SIGTERM)

    def test_sigintEndsTheDrain(self) -> None:
        self.assertSecondSignalEndsTheDrain(signal.SIGINT)

    def test_hangupIgnored(self) -> None:
        backend = Backend(self, echo)
        proxy, address = self.start(backend.address)
        self.assertEqual(ping(address), b"ping")
        proxy.popen.send_signal(signal.SIGHUP)
        self.assertEqual(ping(address), b"ping")
        self.assertEqual(proxy.stop(), 0)
        self.assertIn("SIGHUP ignored", proxy.stderr)


class TransportStopTests(StopTests):
    options = ("--data-path=transport",)


class IdleTimeoutTests(ConsoleScriptTestCase):
    """
    A connection that moves no byte for the idle timeout is closed; one
    that keeps moving is not.
    """

    def test_idleClosed(self) -> None:
        """
        Bytes every 0.3 s keep a connection with a 500 ms idle timeout
        open; once they stop, it is closed about 0.5 s after the last
        one. Timed from the client's last receive, which comes a moment
        after the proxy moved the byte: hence the 50 ms of slack.
        """
        backend = Backend(self, echo)
        proxy, address = self.start(backend.address, "--idle-timeout=500ms")
        with connect(address) as client:
            for _ in range(4):
                client.sendall(b"x")
                self.assertEqual(client.recv(1), b"x")
                moved = time.monotonic()
                time.sleep(0.3)
            self.assertEqual(recvAll(client), b"")
            elapsed = time.monotonic() - moved
        self.assertTrue(0.45 <= elapsed < 1.8, elapsed)
        self.assertTrue(proxy.running())


class KeepaliveTests(ConsoleScriptTestCase):
    """
    C{--keepalive} enables TCP keepalive on both of the proxy's sockets, as
    C{ss} shows them; without it, neither has it.
    """

    def keepaliveSockets(self, *args: str) -> int:
        if not shutil.which("ss"):
            raise SkipTest("ss (iproute2) is not installed")
        backend = Backend(self, echo)
        proxy, address = self.start(backend.address, *args)
        backendPort = backend.address.rsplit(":", 1)[1]
        listenPort = address.rsplit(":", 1)[1]
        with connect(address) as client:
            client.sendall(b"x")
            self.assertEqual(client.recv(1), b"x")
            table = subprocess.run(
                ["ss", "-tno", "state", "established"], capture_output=True, text=True
            ).stdout
        keepalive = 0
        for line in table.splitlines()[1:]:
            fields = line.split()
            local, peer = fields[2], fields[3]
            ours = local.endswith(f":{listenPort}") or peer.endswith(f":{backendPort}")
            keepalive += ours and "keepalive" in line
        return keepalive

    def test_keepalive(self) -> None:
        self.assertEqual(self.keepaliveSockets("--keepalive"), 2)

    def test_noKeepaliveByDefault(self) -> None:
        self.assertEqual(self.keepaliveSockets(), 0)


class ProxyProtocolTests(ConsoleScriptTestCase):
    """
    C{--proxy-protocol} puts the client's and the listener's addresses in
    front of the client's bytes, whatever the data path.
    """

    def received(self, version: str) -> tuple[bytes, socket.socket, str]:
        backend = Backend(self, recvAll)
        proxy, address = self.start(backend.address, f"--proxy-protocol={version}")
        with connect(address) as client:
            client.sendall(b"hello")
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(client), b"")
            self.assertTrue(backend.waitFor(lambda: backend.results))
            return backend.results[0], client.getsockname(), address

    def test_v1(self) -> None:
        data, (clientHost, clientPort), address = self.received("v1")
        host, port = address.rsplit(":", 1)
        header = f"PROXY TCP4 {clientHost} {host} {clientPort} {port}\r\n".encode()
        self.assertEqual(data, header + b"hello")

    def test_v2(self) -> None:
        data, (clientHost, clientPort), address = self.received("v2")
        host, port = address.rsplit(":", 1)
        body = socket.inet_aton(clientHost) + socket.inet_aton(host)
        body += struct.pack("!HH", clientPort, int(port))
        header = headerV2Signature + struct.pack("!BBH", 0x21, 0x11, len(body)) + body
        self.assertEqual(data, header + b"hello")


class CloseLineTests(ConsoleScriptTestCase):
    """
    At debug level every connection ends with one line giving its byte
    counts each way and how it ended, whatever the data path.
    """

    def test_byteCounts(self) -> None:
        backend = Backend(self, replyAfterEof)
        proxy, address = self.start(backend.address, "--log-level=debug")
        with connect(address) as client:
            client.sendall(b"x" * 100_000)
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(client), b"REPLY:" + b"x" * 100_000)
        self.assertEqual(proxy.stop(), 0)
        [line] = [line for line in proxy.stderr.splitlines() if "bytes up" in line]
        self.assertIn(f"-> {backend.address}: 100000 bytes up, 100006 bytes down, ", line)
        self.assertTrue(line.endswith("s, done"), line)


class TransportCloseLineTests(CloseLineTests):
    options = ("--data-path=transport",)


class TransportProxyProtocolTests(ProxyProtocolTests):
    options = ("--data-path=transport",)


class TransportIdleTimeoutTests(IdleTimeoutTests):
    options = ("--data-path=transport",)


class FileDescriptorTests(ConsoleScriptTestCase):
    """
    With RLIMIT_NOFILE capped at 64 and more clients than fit, the proxy
    serves what fits, leaves the rest in the backlog without spinning or
    flooding the log, and serves them once fds free up.
    """

    def test_cappedLimit(self) -> None:
        backend = Backend(self, echo)
        proxy, address, served = self.startWithFewDescriptors(backend.address)
        self.assertTrue(10 <= served < 30, served)
        clients = []
        for i in range(40):
            sock = connect(address, timeout=30)
            sock.sendall(b"%03d" % i)
            clients.append(sock)
        self.assertTrue(backend.waitFor(lambda: backend.accepted >= served))
        cpuBefore = cpuSeconds(proxy.pid)
        time.sleep(2.0)
        cpuSpent = cpuSeconds(proxy.pid) - cpuBefore
        self.assertEqual(backend.accepted, served)
        self.assertLess(served, 40)
        self.assertLess(cpuSpent, 0.2)
        for i, sock in enumerate(clients[:served]):
            self.assertEqual(recvAll(sock, 3), b"%03d" % i)
        for sock in clients[:served]:
            sock.close()
        for i, sock in enumerate(clients[served:], served):
            self.assertEqual(recvAll(sock, 3), b"%03d" % i)
            sock.close()
        self.assertEqual(proxy.stop(), 0)
        lines = proxy.stderr.strip().splitlines()
        self.assertLess(len(lines), 12, lines)
        self.assertIn("RLIMIT_NOFILE=64", proxy.stderr)


class RunTimeExhaustionTests(ConsoleScriptTestCase):
    """
    The soft RLIMIT_NOFILE lowered from outside while the proxy runs (as
    C{prlimit --pid} does) to what it has open plus 8: the clients that
    fit are served, the others wait in the backlog (none is accepted only
    to be closed), the proxy neither spins nor floods the log, and serves
    everyone once the limit is back.
    """

    def test_limitLoweredFromOutside(self) -> None:
        backend = Backend(self, echo)
        notify = NotifyListener(self)
        proxy, address = self.start(
            backend.address, "-c", "1000", env={"NOTIFY_SOCKET": notify.address}
        )
        notify.waitFor("READY=1")
        soft, hard = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE)
        self.addCleanup(self._restore, proxy.pid, (soft, hard))
        opened = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (opened + 8, hard))
        clients = []
        for i in range(30):
            sock = connect(address, timeout=30)
            sock.sendall(b"%03d" % i)
            clients.append(sock)
        self.assertTrue(backend.waitFor(lambda: backend.accepted >= 1))
        cpuBefore = cpuSeconds(proxy.pid)
        time.sleep(3.0)
        cpuSpent = cpuSeconds(proxy.pid) - cpuBefore
        served = backend.accepted
        self.assertTrue(1 <= served < 30, served)
        self.assertLess(cpuSpent, 0.5)
        for i, sock in enumerate(clients[:served]):
            self.assertEqual(recvAll(sock, 3), b"%03d" % i)
        resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for i, sock in enumerate(clients[served:], served):
            self.assertEqual(recvAll(sock, 3), b"%03d" % i)
        self.assertEqual(backend.accepted, 30)
        for sock in clients:
            sock.close()
        self.assertEqual(proxy.stop(), 0)
        lines = proxy.stderr.strip().splitlines()
        self.assertLess(len(lines), 50, lines)
        self.assertNotIn("EMFILE recovery", proxy.stderr)
        self.assertIn("Out of file descriptors", proxy.stderr)

    @staticmethod
    def _restore(pid: int, limits: tuple[int, int]) -> None:
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        except OSError:
            pass


class SoakTests(ConsoleScriptTestCase):
    """
    2,000 connections in waves with random aborts on both sides leave no
    fd behind (idle pipes are closed too) and no creeping memory.
    """

    def test_waves(self) -> None:
        rng = random.Random(42)

        aborts = []

        def backendHandler(conn: socket.socket) -> None:
            if rng.random() < 0.2:
                aborts.append(conn.recv(10))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            echo(conn)

        backend = Backend(self, backendHandler)
        notify = NotifyListener(self)
        proxy, address = self.start(backend.address, env={"NOTIFY_SOCKET": notify.address})
        notify.waitFor("READY=1")
        idleFds = proxy.fdCount()
        outcomes: list[str] = []

        def client(seed: int) -> None:
            """
            A client that aborts, or one that sends, half-closes and must
            get every byte back, or a reset with nothing before it (when
            the backend aborted its side).
            """
            local = random.Random(seed)
            try:
                outcomes.append(exchange(local))
            except OSError as e:
                outcomes.append(f"error {e!r}")

        def exchange(local: random.Random) -> str:
            with connect(address, timeout=10) as sock:
                payload = local.randbytes(local.randrange(1, 200_000))
                if local.random() < 0.2:
                    sock.sendall(payload[:100])
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return "client abort"
                received = bytearray()
                try:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                    while data := sock.recv(65536):
                        received += data
                except OSError as e:
                    if e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                        raise
                    return "reset" if not received else f"reset after {len(received)}"
                return "echoed" if received == payload else f"wrong {len(received)}"

        def wave(first: int) -> None:
            threads = [threading.Thread(target=client, args=(first + i,)) for i in range(100)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)

        wave(0)
        self.assertTrue(waitUntil(lambda: backend.accepted == len(backend.results)))
        warmRss = proxy.rss()
        for n in range(1, 20):
            wave(n * 100)
        self.assertTrue(waitUntil(lambda: backend.accepted == len(backend.results)))
        self.assertGreaterEqual(backend.accepted, 1900)
        self.assertEqual(len(outcomes), 2000)
        odd = [o for o in outcomes if o not in ("echoed", "reset", "client abort")]
        self.assertEqual(odd, [])
        self.assertLessEqual(outcomes.count("reset"), len(aborts))
        self.assertGreater(outcomes.count("echoed"), 1000)
        self.assertTrue(waitUntil(lambda: proxy.fdCount() == idleFds), (proxy.fdCount(), idleFds))
        self.assertLess(proxy.rss() - warmRss, 8 * MiB)
        self.assertTrue(proxy.running())
