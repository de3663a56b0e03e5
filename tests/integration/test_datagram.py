"""
Datagram forwarding end to end: the proxy started by the socket-activation
launcher (or with C{--listen=udp:...}) in front of real UDP and UNIX
datagram backends, with real clients; and the session timer on a clock.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.datagram.port import DatagramPort
from socketproxyd.datagram.relay import DatagramRelay
from socketproxyd.events import Ending
from socketproxyd.proxyheader import V2_SIGNATURE
from tests.support.fakes import FakeFDReactor, FakeTracker
from tests.support.processes import NotifyListener, ProxyProcess, ProxyTestMixin, commands
from tests.support.scraping import samples
from tests.support.sockets import unixPath, waitUntil

TIMEOUT = 5.0


class DatagramBackend:
    """
    A datagram server in a thread that answers each datagram with
    C{prefix} and the datagram, from the address it was sent to.
    """

    def __init__(
        self,
        testcase: object,
        family: int = socket.AF_INET,
        prefix: bytes = b"R:",
        port: int = 0,
    ) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_UNIX:
            self.sock.bind(unixPath(testcase, f"dgram{id(self):x}.sock"))
            self.address = self.sock.getsockname()
        else:
            self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
            host, port = self.sock.getsockname()[:2]
            self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self.prefix = prefix
        self.peers: set[object] = set()
        self.received = 0
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        testcase.addCleanup(self.sock.close)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(70000)
                if peer is None:
                    continue
                self.peers.add(peer)
                self.received += 1
                self.sock.sendto(self.prefix + data, peer)
            except OSError:
                return


def client(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    return sock


def udpSocket(family: int = socket.AF_INET) -> tuple[socket.socket, tuple]:
    """
    A bound datagram socket for the launcher to pass, and its address.
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    return sock, sock.getsockname()


class DatagramTests(ProxyTestMixin, SynchronousTestCase):
    """
    Inherited datagram sockets: sessions, replies, limits and errors.
    """

    command = commands()["socketproxyd"]

    def proxy(
        self, target: str, *args: str, family: int = socket.AF_INET, **kwargs: object
    ) -> tuple[ProxyProcess, tuple]:
        sock, address = udpSocket(family)
        process = ProxyProcess(
            self, [*self.command, *args, target], [sock], fdnames=["dns"], **kwargs
        )
        sock.close()
        return process, address

    def test_fiftyClients(self) -> None:
        """
        50 clients on different source ports each send numbered datagrams
        and get exactly their own replies back, from the address they
        wrote to; the backend sees one peer per client.
        """
        backend = DatagramBackend(self)
        proxy, address = self.proxy(backend.address, "--log-level=debug")
        clients = [client() for _ in range(50)]
        for n in range(3):
            for i, sock in enumerate(clients):
                sock.sendto(f"{i}:{n}".encode(), address)
            for i, sock in enumerate(clients):
                data, source = sock.recvfrom(100)
                self.assertEqual((data, source), (f"R:{i}:{n}".encode(), address))
        self.assertEqual(len(backend.peers), 50)
        self.assertEqual(proxy.stop(), 0)
        closes = [line for line in proxy.stderr.splitlines() if "datagrams (" in line]
        self.assertEqual(len(closes), 50, proxy.stderr)
        self.assertTrue(all(line.startswith("dns: ") for line in closes), closes)
        self.assertIn("3 datagrams (9 bytes) up, 3 datagrams (15 bytes) down", closes[0])

    def test_metrics(self) -> None:
        """
        With C{--metrics}, sessions, their datagrams and bytes are counted
        by route and direction.
        """
        backend = DatagramBackend(self)
        metrics = unixPath(self, "metrics.sock")
        _, address = self.proxy(backend.address, f"--metrics=unix:{metrics}")
        clients = [client() for _ in range(3)]
        for _ in range(2):
            for sock in clients:
                sock.sendto(b"abcd", address)
            for sock in clients:
                self.assertEqual(sock.recvfrom(100)[0], b"R:abcd")
        found = samples(metrics)
        route = ("route", "dns")
        up, down = ("direction", "upstream"), ("direction", "downstream")
        self.assertEqual(found["socketproxyd_sessions_total", (route,)], 3)
        self.assertEqual(found["socketproxyd_sessions_active", (route,)], 3)
        self.assertEqual(found["socketproxyd_datagrams_total", (up, route)], 6)
        self.assertEqual(found["socketproxyd_datagrams_total", (down, route)], 6)
        self.assertEqual(found["socketproxyd_datagram_bytes_total", (up, route)], 24)
        self.assertEqual(found["socketproxyd_datagram_bytes_total", (down, route)], 36)

    def test_boundariesAndSizes(self) -> None:
        """
        Datagrams keep their boundaries, from 0 bytes to the largest a UDP
        datagram over IPv6 carries, on an IPv6 listener.
        """
        backend = DatagramBackend(self, socket.AF_INET6, prefix=b"")
        proxy, address = self.proxy(backend.address, family=socket.AF_INET6)
        sock = client(socket.AF_INET6)
        for size in (0, 1, 512, 1400, 9000, 65527):
            payload = os.urandom(size)
            sock.sendto(payload, address)
            self.assertEqual(sock.recvfrom(70000)[0], payload)

    def test_nameTarget(self) -> None:
        """
        A named target is resolved for each new client without blocking,
        and its addresses tried in turn: C{localhost} resolves to ::1 and
        127.0.0.1, the backend listens on the latter only, and a client
        that retries (as DNS clients do) gets its answer.
        """
        backend = DatagramBackend(self)
        port = backend.address.rsplit(":", 1)[1]
        proxy, address = self.proxy(f"localhost:{port}")
        sock = client()
        sock.settimeout(0.3)
        for _ in range(20):
            sock.sendto(b"q", address)
            try:
                self.assertEqual(sock.recvfrom(100)[0], b"R:q")
                break
            except TimeoutError:
                continue
        else:
            self.fail("no answer through a named target")
        self.assertEqual(len(backend.peers), 1)

    def test_unixDatagramTarget(self) -> None:
        backend = DatagramBackend(self, socket.AF_UNIX)
        proxy, address = self.proxy(backend.address)
        sock = client()
        sock.sendto(b"hello", address)
        self.assertEqual(sock.recvfrom(100)[0], b"R:hello")

    def test_targetNotListening(self) -> None:
        """
        A target that does not listen answers with ICMP port unreachable:
        the session ends (refused), and the proxy goes on serving.
        """
        dead, (_, port) = udpSocket()
        dead.close()
        proxy, address = self.proxy(f"127.0.0.1:{port}", "--log-level=debug")
        sock = client()
        sock.settimeout(0.5)
        for payload in (b"a", b"b"):
            sock.sendto(payload, address)
            self.assertRaises(TimeoutError, sock.recvfrom, 100)
        DatagramBackend(self, port=port)
        sock.settimeout(TIMEOUT)
        sock.sendto(b"c", address)
        self.assertEqual(sock.recvfrom(100)[0], b"R:c")
        self.assertEqual(proxy.stop(), 0)
        self.assertIn("1 datagrams (1 bytes) up, 0 datagrams (0 bytes) down", proxy.stderr)
        self.assertIn(", refused", proxy.stderr)

    def test_limit(self) -> None:
        """
        C{-c 3} with 5 clients: three are served, the datagrams of the
        other two are dropped and counted, in one log line.
        """
        backend = DatagramBackend(self)
        proxy, address = self.proxy(backend.address, "-c", "3")
        clients = [client() for _ in range(5)]
        for sock in clients[:3]:
            sock.sendto(b"x", address)
            self.assertEqual(sock.recvfrom(100)[0], b"R:x")
        for sock in clients[3:]:
            sock.settimeout(0.3)
            for _ in range(2):
                sock.sendto(b"y", address)
                self.assertRaises(TimeoutError, sock.recvfrom, 100)
        self.assertEqual(proxy.stop(), 0)
        lines = [line for line in proxy.stderr.splitlines() if "At the connection limit" in line]
        self.assertEqual(len(lines), 1, proxy.stderr)
        self.assertIn("dns: 4 datagrams dropped in all", proxy.stderr)
        self.assertEqual(backend.received, 3)

    def test_idleExit(self) -> None:
        """
        With C{--exit-idle-time}, sessions count as connections: the proxy
        exits once the last session has been idle for its timeout.
        """
        backend = DatagramBackend(self)
        proxy, address = self.proxy(
            backend.address, "--idle-timeout=300ms", "--exit-idle-time=500ms"
        )
        sock = client()
        sock.sendto(b"x", address)
        started = time.monotonic()
        self.assertEqual(sock.recvfrom(100)[0], b"R:x")
        self.assertEqual(proxy.wait(10), 0)
        self.assertGreater(time.monotonic() - started, 0.7)

    def test_streamAndDatagramOfOneName(self) -> None:
        """
        A socket unit with C{ListenStream=} and C{ListenDatagram=} gives
        both sockets one name; each serves its own kind.
        """
        backend = DatagramBackend(self)
        stream = socket.socket()
        stream.bind(("127.0.0.1", 0))
        stream.listen()
        dgram, address = udpSocket()
        proxy = ProxyProcess(
            self,
            [*self.command, f"--target=dns={backend.address}"],
            [stream, dgram],
            fdnames=["dns", "dns"],
        )
        stream.close()
        dgram.close()
        sock = client()
        sock.sendto(b"q", address)
        self.assertEqual(sock.recvfrom(100)[0], b"R:q")
        self.assertTrue(proxy.running())

    def test_unixDatagramListener(self) -> None:
        """
        An inherited UNIX datagram socket: a client bound to its own
        address gets its replies there.
        """
        backend = DatagramBackend(self)
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = unixPath(self, "listen.sock")
        listening.bind(path)
        ProxyProcess(self, [*self.command, backend.address], [listening])
        listening.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(unixPath(self, "client.sock"))
        sock.settimeout(TIMEOUT)
        sock.sendto(b"over unix", path)
        self.assertEqual(sock.recvfrom(100), (b"R:over unix", path))

    def test_twoListeners(self) -> None:
        """
        Replies leave by the socket the client wrote to, with two datagram
        listeners of one name; an unbound UNIX client is dropped, and the
        proxy goes on.
        """
        backend = DatagramBackend(self)
        first, firstAddress = udpSocket()
        second, secondAddress = udpSocket()
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = unixPath(self, "unbound.sock")
        unix.bind(path)
        proxy = ProxyProcess(
            self, [*self.command, backend.address], [first, second, unix], fdnames=["dns"] * 3
        )
        for sock in (first, second, unix):
            sock.close()
        unbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(unbound.close)
        unbound.sendto(b"lost", path)
        for address in (firstAddress, secondAddress):
            sock = client()
            sock.sendto(b"q", address)
            self.assertEqual(sock.recvfrom(100), (b"R:q", address))
        self.assertEqual(proxy.stop(), 0)
        self.assertNotIn("Traceback", proxy.stderr)
        self.assertIn("unbound UNIX clients are dropped", proxy.stderr)

    def test_statusAndStop(self) -> None:
        """
        STATUS counts streams and sessions apart; on SIGTERM, sessions are
        closed at once, even with a drain timeout (nothing is in flight).
        """
        backend = DatagramBackend(self)
        notify = NotifyListener(self)
        proxy, address = self.proxy(
            backend.address,
            "--drain-timeout=30s",
            env={"NOTIFY_SOCKET": notify.address},
        )
        notify.waitFor("READY=1")
        clients = [client() for _ in range(2)]
        for sock in clients:
            sock.sendto(b"x", address)
            self.assertEqual(sock.recvfrom(100)[0], b"R:x")
        notify.waitFor("STATUS=2 connections open (at most 256; streams 0, datagram sessions 2)")
        started = time.monotonic()
        self.assertEqual(proxy.stop(), 0)
        self.assertLess(time.monotonic() - started, 5.0)

    def test_proxyProtocolV2(self) -> None:
        """
        With C{--proxy-protocol=v2} each datagram to the target starts with
        a header naming the client (transport DGRAM); replies pass bare.
        """
        backend = DatagramBackend(self, prefix=b"")
        proxy, address = self.proxy(backend.address, "--proxy-protocol=v2")
        sock = client()
        sock.bind(("127.0.0.1", 0))
        sock.sendto(b"query", address)
        data = sock.recvfrom(200)[0]
        header = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x12, 12)
        body = socket.inet_aton("127.0.0.1") * 2
        body += struct.pack("!HH", sock.getsockname()[1], address[1])
        self.assertEqual(data, header + body + b"query")

    def test_proxyProtocolV1Refused(self) -> None:
        proxy, address = self.proxy("127.0.0.1:1", "--proxy-protocol=v1")
        self.assertEqual(proxy.wait(), 1)
        self.assertIn("takes --proxy-protocol=v2, not v1", proxy.stderr)
        self.assertEqual(len(proxy.stderr.splitlines()), 1, proxy.stderr)

    def test_listenUDP(self) -> None:
        backend = DatagramBackend(self)
        probe, (_, port) = udpSocket()
        probe.close()
        ProxyProcess(
            self,
            [*self.command, f"--listen=udp:{port}:interface=127.0.0.1", backend.address],
        )
        sock = client()
        sock.settimeout(0.2)
        for _ in range(50):
            sock.sendto(b"hi", ("127.0.0.1", port))
            try:
                self.assertEqual(sock.recvfrom(100)[0], b"R:hi")
                break
            except TimeoutError:
                continue
        else:
            self.fail(f"no reply from --listen=udp:{port}")

    def test_flood(self) -> None:
        """
        Clients flooding a backend slower than them for 3 s: the proxy
        drops what cannot go, its memory stays bounded, and it goes on.
        """
        slow = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        slow.bind(("127.0.0.1", 0))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(slow.close)
        proxy, address = self.proxy(f"127.0.0.1:{slow.getsockname()[1]}")
        self.assertTrue(waitUntil(lambda: proxy.running() and proxy.rss() > 0))
        senders = [client() for _ in range(8)]
        payload = b"z" * 1400
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for sock in senders:
                sock.sendto(payload, address)
        before = proxy.rss()
        deadline = time.monotonic() + 3.0
        sent = 0
        while time.monotonic() < deadline:
            for sock in senders:
                sock.sendto(payload, address)
                sent += 1
        self.assertGreater(sent, 10000)
        self.assertLess(proxy.rss() - before, 4 << 20)
        self.assertTrue(proxy.running())
        self.assertEqual(proxy.stop(), 0)
        self.assertNotIn("Traceback", proxy.stderr)


def dnsmasqPath() -> str | None:
    found = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    return found if os.access(found, os.X_OK) else None


class DigTests(ProxyTestMixin, SynchronousTestCase):
    """
    C{dig} (and C{kdig} where installed) through the proxy to dnsmasq, over
    UDP and over TCP through one process.
    """

    command = commands()["socketproxyd"]

    def setUp(self) -> None:
        super().setUp()
        if not (shutil.which("dig") and dnsmasqPath()):
            raise SkipTest("dig and dnsmasq are not installed")

    def startDnsmasq(self, hosts: str) -> int:
        """
        dnsmasq answering from C{hosts} on a free port of 127.0.0.1, until
        the test ends; its port, once dnsmasq answers a query there. A port
        found free can be taken by another process before dnsmasq binds it
        (dnsmasq then exits): another is tried, up to five.
        """
        for _ in range(5):
            probe, (_, port) = udpSocket()
            probe.close()
            dnsmasq = subprocess.Popen(
                [dnsmasqPath(), "--keep-in-foreground",
                 "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", "--port", str(port),
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root",
                 "--pid-file="],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.addCleanup(dnsmasq.wait)
            self.addCleanup(dnsmasq.terminate)

            def settled(port: int = port, dnsmasq: subprocess.Popen[bytes] = dnsmasq) -> bool:
                if dnsmasq.poll() is not None:
                    return True
                asked = subprocess.run(
                    ["dig", "+time=1", "+tries=1", "-p", str(port), "@127.0.0.1", "test", "SOA"],
                    capture_output=True, timeout=10,
                )  # fmt: skip
                return asked.returncode == 0

            if waitUntil(settled, 15) and dnsmasq.poll() is None:
                return port
        self.fail("dnsmasq could not bind a port in five tries")

    def test_dig(self) -> None:
        hosts = os.path.abspath(self.mktemp())
        with open(hosts, "w") as f:
            f.write("192.0.2.7 web.test\n2001:db8::7 web.test\n")
            for i in range(40):
                f.write(f"192.0.2.{i + 10} many.test\n")
        port = self.startDnsmasq(hosts)
        stream = socket.socket()
        stream.bind(("127.0.0.1", 0))
        stream.listen()
        dgram, address = udpSocket()
        ProxyProcess(
            self, [*self.command, f"127.0.0.1:{port}"], [stream, dgram], fdnames=["dns", "dns"]
        )
        streamPort = stream.getsockname()[1]
        stream.close()
        dgram.close()

        def dig(*args: str, port: int = address[1]) -> str:
            return subprocess.run(
                ["dig", "+short", "+time=2", "+tries=3", "-p", str(port), "@127.0.0.1", *args],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip

        self.assertTrue(waitUntil(lambda: dig("web.test", "A").strip() == "192.0.2.7", 15))
        self.assertEqual(dig("web.test", "AAAA").strip(), "2001:db8::7")
        many = dig("+bufsize=4096", "+ignore", "many.test", "A").split()
        self.assertEqual(len(many), 40)
        self.assertEqual(dig("+tcp", "web.test", "A", port=streamPort).strip(), "192.0.2.7")
        if shutil.which("kdig"):
            answer = subprocess.run(
                ["kdig", "+short", "+time=2", "+retry=2", "-p", str(address[1]), "@127.0.0.1",
                 "+bufsize=4096", "many.test", "A"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            self.assertEqual(len(answer.split()), 40, answer)


class SessionTimerTests(SynchronousTestCase):
    """
    A session ends after its idle timeout without a datagram either way,
    60 s by default; on a clock.
    """

    def test_idleExpiry(self) -> None:
        reactor = FakeFDReactor()
        backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        backend.bind(("127.0.0.1", 0))
        self.addCleanup(backend.close)
        listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listening.bind(("127.0.0.1", 0))
        tracker = FakeTracker()
        target = parseTarget(f"127.0.0.1:{backend.getsockname()[1]}")
        relay = DatagramRelay(reactor, target, ProxySettings(), tracker)
        port = DatagramPort(reactor, listening, relay)
        self.addCleanup(port.stopListening)
        sock = client()
        self.addCleanup(sock.close)
        sock.sendto(b"x", listening.getsockname())
        self.assertTrue(waitUntil(lambda: (port.doRead(), relay.sessions)[1], 5))
        [session] = relay.sessions.values()
        reactor.advance(59)
        sock.sendto(b"y", listening.getsockname())
        self.assertTrue(waitUntil(lambda: (port.doRead(), session.counts[0] == 2)[1], 5))
        reactor.advance(59)
        self.assertIsNone(session.ending)
        reactor.advance(2)
        self.assertIs(session.ending, Ending.IDLE_TIMEOUT)
        self.assertEqual(tracker.closes, [session])
        self.assertEqual(relay.sessions, {})
        self.assertNotIn(session, reactor.readers)
