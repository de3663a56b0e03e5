"""
C{--transparent} in network namespaces the test creates: a client's, the
proxy's and the backend's, with a veth pair between the client and the
proxy and one between the proxy and the backend. The backend's default
route is the proxy, and in the proxy's namespace policy routing delivers
what the backend sends locally (the README's recipe), so its replies to a
client's address reach the proxy's socket bound to that address. The
backend answers with the peer address it sees. Root and C{ip netns} only;
skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.processes import commands

SOCKETPROXYD = commands()["socketproxyd"]
TIMEOUT = 30

# Listens on port 9000 of every address; tells each client the address it sees it from, then
# echoes everything to the end.
BACKEND = """\
import socket, sys, threading
def serve(conn, peer):
    with conn:
        conn.sendall(f"{peer[0]} {peer[1]}\\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)
for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    server = socket.socket(family)
    if family == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    server.bind((address, 9000))
    server.listen(128)
    threading.Thread(
        target=lambda s=server: [
            threading.Thread(target=serve, args=s.accept(), daemon=True).start()
            for _ in iter(int, 1)
        ],
        daemon=True,
    ).start()
def echoPeer(server):
    while True:
        data, peer = server.recvfrom(65536)
        server.sendto(f"{peer[0]} {peer[1]} ".encode() + data, peer)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 9001))
threading.Thread(target=echoPeer, args=(udp,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

# 50 UDP clients on their own ports, each sending its number to argv[1] port 5300 until
# answered (10 tries, 1 s each); prints how many got only their own answer, naming their own
# address (argv[2]) and port as the backend saw them.
DATAGRAM_CLIENTS = """\
import socket, sys
good = 0
clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
for number, sock in enumerate(clients):
    sock.settimeout(1)
    for _ in range(10):
        sock.sendto(str(number).encode(), (sys.argv[1], 5300))
        try:
            data = sock.recv(65536)
            break
        except TimeoutError:
            continue
    port = sock.getsockname()[1]
    good += data.decode() == f"{sys.argv[2]} {port} {number}"
print(good)
"""

# Connects to argv[1] port 8080; prints its own address, the line the backend sent, and whether
# SIZE random bytes sent came back whole (SHA-256).
CLIENT = """\
import hashlib, os, socket, sys, threading
SIZE = int(sys.argv[2])
with socket.create_connection((sys.argv[1], 8080), timeout=20) as sock:
    own = sock.getsockname()
    line = b""
    while not line.endswith(b"\\n"):
        line += sock.recv(1)
    payload = os.urandom(SIZE)
    sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    got = hashlib.sha256()
    total = 0
    while data := sock.recv(65536):
        got.update(data)
        total += len(data)
    sender.join()
whole = total == SIZE and got.digest() == hashlib.sha256(payload).digest()
print(own[0], own[1], line.decode().strip(), whole)
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=check)


class Namespaces:
    """
    The three namespaces and what joins them; removed by the test's
    cleanup.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        tag = uuid.uuid4().hex[:6]
        self.client, self.proxy, self.backend = (f"spx{tag}{n}" for n in "cpb")
        for ns in (self.client, self.proxy, self.backend):
            run("ip", "netns", "add", ns)
            test.addCleanup(run, "ip", "netns", "del", ns, check=False)
            self.inside(ns, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", f"c{tag}", "netns", self.client, "type", "veth", "peer",
            "name", f"p{tag}", "netns", self.proxy)  # fmt: skip
        run("ip", "link", "add", f"q{tag}", "netns", self.proxy, "type", "veth", "peer",
            "name", f"b{tag}", "netns", self.backend)  # fmt: skip
        sides = (
            (self.client, f"c{tag}", "10.201.1.2/24", "fd01:1::2/64", "10.201.1.1", "fd01:1::1"),
            (self.proxy, f"p{tag}", "10.201.1.1/24", "fd01:1::1/64", None, None),
            (self.proxy, f"q{tag}", "10.201.2.1/24", "fd01:2::1/64", None, None),
            (self.backend, f"b{tag}", "10.201.2.2/24", "fd01:2::2/64", "10.201.2.1", "fd01:2::1"),
        )
        for ns, link, v4, v6, gateway4, gateway6 in sides:
            self.inside(ns, "ip", "addr", "add", v4, "dev", link)
            self.inside(ns, "ip", "-6", "addr", "add", v6, "dev", link, "nodad")
            self.inside(ns, "ip", "link", "set", link, "up")
            if gateway4 and gateway6:
                self.inside(ns, "ip", "route", "add", "default", "via", gateway4)
                self.inside(ns, "ip", "-6", "route", "add", "default", "via", gateway6)
        for version, backend, anywhere in (("-4", "10.201.2.2", "0.0.0.0/0"),
                                           ("-6", "fd01:2::2", "::/0")):  # fmt: skip
            self.inside(self.proxy, "ip", version, "rule", "add", "from", backend, "lookup", "100")
            self.inside(self.proxy, "ip", version, "route", "add", "local", anywhere, "dev", "lo",
                        "table", "100")  # fmt: skip

    def inside(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *argv)

    def command(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]


class NamespaceTestCase(SynchronousTestCase):
    """
    The namespaces, the backend in its own, and a proxy in its own.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0 or not shutil.which("ip") or not SOCKETPROXYD:
            raise SkipTest("needs root and ip (iproute2) to create network namespaces")
        try:
            self.ns = Namespaces(self)
        except subprocess.CalledProcessError as e:
            why = f"network namespaces cannot be set up here: {e.stderr.strip()}"
            raise SkipTest(why) from None
        self.backend = subprocess.Popen(
            self.ns.command(self.ns.backend, sys.executable, "-c", BACKEND),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(self.stopProcess, self.backend)
        assert self.backend.stdout is not None
        self.assertEqual(self.backend.stdout.readline().strip(), "ready")

    def stopProcess(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)

    def proxy(self, listen: str, target: str, *args: str) -> subprocess.Popen[str]:
        assert SOCKETPROXYD is not None
        proxy = subprocess.Popen(
            self.ns.command(self.ns.proxy, *SOCKETPROXYD, *args, f"--listen={listen}", target),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(self.stopProcess, proxy)
        assert proxy.stderr is not None
        line = proxy.stderr.readline()
        self.assertIn("Listening on", line)
        return proxy

    def client(self, address: str, size: int = 0) -> list[str]:
        done = self.ns.inside(self.ns.client, sys.executable, "-c", CLIENT, address, str(size))
        return done.stdout.split()


class TransparentTests(NamespaceTestCase):
    """
    The backend sees the client's own address with C{--transparent}, and
    the proxy's without.
    """

    def test_ipv4SeesTheClient(self) -> None:
        """
        Over IPv4 the backend sees the client's own address and port, and
        16 MiB go both ways byte for byte.
        """
        self.proxy("tcp:8080:interface=10.201.1.1", "10.201.2.2:9000", "--transparent")
        host, port, seenHost, seenPort, whole = self.client("10.201.1.1", 16 << 20)
        self.assertEqual((seenHost, seenPort, whole), (host, port, "True"))
        self.assertEqual(host, "10.201.1.2")

    def test_ipv6SeesTheClient(self) -> None:
        """
        The same over IPv6.
        """
        self.proxy("tcp6:8080:interface=fd01\\:1\\:\\:1", "[fd01:2::2]:9000", "--transparent")
        host, port, seenHost, seenPort, whole = self.client("fd01:1::1", 16 << 20)
        self.assertEqual((seenHost, seenPort, whole), (host, port, "True"))
        self.assertEqual(host, "fd01:1::2")

    def test_withoutItTheProxysAddress(self) -> None:
        """
        Without C{--transparent} the backend sees the proxy (so the tests
        above can fail).
        """
        self.proxy("tcp:8080:interface=10.201.1.1", "10.201.2.2:9000")
        host, port, seenHost, seenPort, whole = self.client("10.201.1.1")
        self.assertEqual((seenHost, whole), ("10.201.2.1", "True"))
        self.assertNotEqual(seenPort, port)

    def test_manyClientsEachTheirOwn(self) -> None:
        """
        Twenty clients one after another: each sees its own port at the
        backend, and its own bytes.
        """
        self.proxy("tcp:8080:interface=10.201.1.1", "10.201.2.2:9000", "--transparent")
        seen = set()
        for _ in range(20):
            host, port, seenHost, seenPort, whole = self.client("10.201.1.1", 4096)
            self.assertEqual((seenHost, seenPort, whole), (host, port, "True"))
            seen.add(port)
        self.assertEqual(len(seen), 20)

    def test_clientOnTheProxysHost(self) -> None:
        """
        A client on the proxy's own host (a health check) holds its
        address and port itself: its connection leaves from the same
        address with a port of the kernel's, and is served.
        """
        self.proxy("tcp:8080:interface=10.201.1.1", "10.201.2.2:9000", "--transparent")
        done = self.ns.inside(self.ns.proxy, sys.executable, "-c", CLIENT, "10.201.1.1", "4096")
        host, port, seenHost, seenPort, whole = done.stdout.split()
        self.assertEqual((host, seenHost, whole), ("10.201.1.1", "10.201.1.1", "True"))
        self.assertNotEqual(seenPort, port)

    def test_unixClient(self) -> None:
        """
        A client on a UNIX socket has no address to connect from: closed,
        with one warning, and served from the proxy's with C{=try}.
        """
        path = f"/tmp/spx-{os.getpid()}-{self.ns.proxy}.sock"
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        for option, answered in (("--transparent", False), ("--transparent=try", True)):
            proxy = self.proxy(f"unix:{path}", "10.201.2.2:9000", option)
            code = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(20)\n"
                "print(s.recv(100).decode().split(' ')[0] or 'closed')\n"
            )
            done = self.ns.inside(self.ns.proxy, sys.executable, "-c", code, path)
            self.assertEqual(done.stdout.strip(), "10.201.2.1" if answered else "closed")
            proxy.terminate()
            _, stderr = proxy.communicate(timeout=TIMEOUT)
            self.assertIn("Cannot connect to 10.201.2.2:9000 from the address of", stderr)
            if os.path.exists(path):
                os.unlink(path)


class StartupTests(SynchronousTestCase):
    """
    What cannot work is said at start-up, in one line, exit 1.
    """

    def assertStartupError(self, argv: list[str], expected: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(done.returncode, 1, done.stderr)
        lines = done.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, done.stderr)
        self.assertIn(expected, lines[0])

    def test_withoutTheCapability(self) -> None:
        """
        Without CAP_NET_ADMIN and CAP_NET_RAW (dropped with capsh):
        the proxy says what it needs.
        """
        if not shutil.which("capsh") or os.geteuid() != 0 or not SOCKETPROXYD:
            raise SkipTest("needs root and capsh (libcap2-bin) to drop a capability")
        command = " ".join([*SOCKETPROXYD, "--transparent", "--listen=tcp:0", "127.0.0.1:9"])
        argv = ["capsh", "--drop=cap_net_admin,cap_net_raw", "--", "-c", command]
        self.assertStartupError(argv, "--transparent needs CAP_NET_ADMIN")

    def test_unixTarget(self) -> None:
        if not SOCKETPROXYD:
            raise SkipTest("the console script is not installed")
        argv = [*SOCKETPROXYD, "--transparent", "--listen=tcp:0", "/run/backend.sock"]
        self.assertStartupError(argv, "--transparent needs TARGET to be an IP address")


class TransparentDatagramTests(NamespaceTestCase):
    """
    Datagram sessions with C{--transparent}: the backend sees each
    client's own address, and each client gets only its own replies.
    """

    def test_fiftyClients(self) -> None:
        """
        50 clients, each answered with its own address and port as the
        backend saw them, and with its own datagram.
        """
        self.proxy("udp:5300:interface=10.201.1.1", "10.201.2.2:9001", "--transparent")
        done = self.ns.inside(
            self.ns.client, sys.executable, "-c", DATAGRAM_CLIENTS, "10.201.1.1", "10.201.1.2"
        )
        self.assertEqual(done.stdout.strip(), "50", done.stderr)

    def test_withoutItTheProxysAddress(self) -> None:
        """
        Without C{--transparent} no client is seen as itself.
        """
        self.proxy("udp:5300:interface=10.201.1.1", "10.201.2.2:9001")
        done = self.ns.inside(
            self.ns.client, sys.executable, "-c", DATAGRAM_CLIENTS, "10.201.1.1", "10.201.1.2"
        )
        self.assertEqual(done.stdout.strip(), "0", done.stderr)
