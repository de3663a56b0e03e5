"""
The harness of the systemd suite (L{tests.systemd.test_systemd}): the files of
the container's tree (units, backends, clients), and L{SystemdTestCase}, which
boots one container per test class, installs the project in it as the README
says, and asks systemd about units.
"""

from __future__ import annotations

import atexit
import json
import re
import select
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .container import Container, ContainerUnavailable, ensureNspawn, waitFor
from .installkit import PREFIX, KitUnavailable, buildKit, installScript

PYTHON = "/usr/bin/python3"


SOCKETPROXYD = f"{PREFIX}/bin/socketproxyd"


TWISTD = f"{PREFIX}/bin/twistd"


TWIST = f"{PREFIX}/bin/twist"


KIT = "/srv/spx-install"


INSTALL_TIMEOUT = 300.0


BACKEND = "/srv/spx-test/backend.py"


CLIENT = "/srv/spx-test/client.py"


TIMEOUT = 10.0


# STATUS= of a proxy with one inherited socket (named after the socket unit, systemd's default
# FileDescriptorName=): its count alone, since a per-name breakdown of one name says nothing more.
STATUS = r"^(1 connection|\d+ connections) open \(at most 256\)$"


def statusText(unit: str, count: int = 0) -> str:
    """
    The exact STATUS= text of the proxy behind C{unit}.socket with C{count}
    connections open.
    """
    noun = "connection" if count == 1 else "connections"
    return f"{count} {noun} open (at most 256)"


# An echo server answering each chunk (with a third argument "udp", each datagram) in upper
# case, ready (READY=1) once listening; on HOST PORT, or on a UNIX socket given as its path.
BACKEND_SOURCE = """\
import os, socket, sys, threading

def serve(conn):
    with conn:
        while chunk := conn.recv(65536):
            conn.sendall(chunk.upper())

datagrams = sys.argv[3:] == ["udp"]
if sys.argv[1].startswith("/"):
    if os.path.exists(sys.argv[1]):
        os.unlink(sys.argv[1])
    server = socket.socket(socket.AF_UNIX)
    server.bind(sys.argv[1])
    server.listen(128)
elif datagrams:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((sys.argv[1], int(sys.argv[2])))
else:
    server = socket.create_server((sys.argv[1], int(sys.argv[2])))
address = os.environ.get("NOTIFY_SOCKET", "")
if address:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto(b"READY=1", "\\0" + address[1:] if address[0] == "@" else address)
while datagrams:
    data, peer = server.recvfrom(65536)
    server.sendto(data.upper(), peer)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


# Send argv[3] to argv[1]:argv[2] by UDP until answered (at most 10 tries, 1 s each); print
# the answer and the address it came from.
DGRAM_CLIENT = """\
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1)
    for _ in range(10):
        s.sendto(payload, (host, port))
        try:
            data, source = s.recvfrom(65536)
            break
        except TimeoutError:
            continue
    else:
        sys.exit("no reply")
print(data.decode(), source[0])
"""


# Send argv[3], then with "hold": print the answer, wait for the end and say how it
# ended; otherwise half-close and print everything answered.
CLIENT_SOURCE = """\
import socket, sys

with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as sock:
    payload = sys.argv[3].encode()
    sock.sendall(payload)
    if sys.argv[4:] == ["hold"]:
        got = b""
        while len(got) < len(payload):
            got += sock.recv(65536)
        print(got.decode(), flush=True)
        try:
            rest = sock.recv(65536)
            print("eof" if rest == b"" else "data", flush=True)
        except ConnectionResetError:
            print("reset", flush=True)
    else:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            got += b"<reset>"
        sys.stdout.write(got.decode())
"""


UNIX_BACKEND = "/run/spx-backend.sock"


LATE_BACKEND = "/run/spx-late.sock"


FORMS = {
    "console": SOCKETPROXYD,
    "twistd": f"{TWISTD} --nodaemon --pidfile= socketproxy",
    "twist": f"{TWIST} socketproxy",
}


BOTH = ("console", "twistd")


@dataclass(frozen=True)
class Scenario:
    """
    A proxy unit pair per C{ExecStart=} form in C{forms}: C{NAME-FORM.socket}
    on 127.0.0.1 from C{port} on (one port per form, in order), and its
    Type=notify service running the form with C{arguments}, after
    C{requires}, with C{unit} and C{service} lines added to its sections;
    C{listen} is the socket unit's line. With C{scrapePort}, a second
    socket unit per form, C{NAME-FORM-metrics.socket} on 127.0.0.1 from
    that port on, named C{metrics} for the same service (as
    examples/systemd/proxy-to-nginx-metrics.socket is).
    """

    port: int
    arguments: str
    forms: tuple[str, ...] = BOTH
    requires: str = "backend.service"
    unit: str = ""
    service: str = ""
    listen: str = "ListenStream=127.0.0.1:{port}"
    scrapePort: int | None = None

    def portOf(self, form: str) -> int:
        """
        The port of this scenario's socket unit for C{form}.
        """
        return self.port + self.forms.index(form)

    def scrapePortOf(self, form: str) -> int:
        """
        The port of this scenario's metrics socket unit for C{form}.
        """
        assert self.scrapePort is not None
        return self.scrapePort + self.forms.index(form)


SCENARIOS = {
    "proxy": Scenario(8100, "127.0.0.1:8000", service="DynamicUser=yes\n"),
    "dead": Scenario(8110, "127.0.0.1:9", forms=(*BOTH, "twist")),
    "idle": Scenario(8120, "--exit-idle-time=1s 127.0.0.1:8000"),
    "stop": Scenario(8130, "127.0.0.1:8000"),
    "watchdog": Scenario(
        8140, "127.0.0.1:8000", service="WatchdogSec=1s\nRestart=on-failure\nRestartSec=100ms\n"
    ),
    "drain": Scenario(
        8150,
        "--drain-timeout=10s --connect-retry=5s 127.0.0.1:8001",
        requires="slow-source.service",
    ),
    "ns": Scenario(
        8160,
        "127.0.0.1:8010",
        requires="backend-ns.service",
        unit="JoinsNamespaceOf=backend-ns.service\n",
        service="PrivateNetwork=yes\n",
    ),
    "dgram": Scenario(
        8170, "127.0.0.1:8002", requires="dgram-backend.service", listen="ListenDatagram={port}"
    ),
    "metrics": Scenario(8180, "--metrics=metrics 127.0.0.1:8000", scrapePort=8190),
    "early": Scenario(8200, "--log-level=debug 127.0.0.1:8000", forms=("console",)),
    "early-unix": Scenario(
        8201,
        f"--log-level=debug {UNIX_BACKEND}",
        forms=("console",),
        requires="backend-unix.service",
    ),
    "early-idle": Scenario(
        8202,
        "--log-level=debug --exit-idle-time=1s 127.0.0.1:8000",
        forms=("console",),
        unit="StartLimitIntervalSec=0\n",
    ),
    "early-limit": Scenario(8203, "--log-level=debug -c 1 127.0.0.1:8000", forms=("console",)),
    "early-reset": Scenario(8204, "--log-level=debug 127.0.0.1:8000", forms=("console",)),
    "early-half": Scenario(8206, "--log-level=debug 127.0.0.1:8000", forms=("console",)),
    "early-rst": Scenario(
        8207, "--log-level=debug 127.0.0.1:8003", forms=("console",), requires="resetter.service"
    ),
    "early-retry": Scenario(
        8205, f"--log-level=debug --connect-retry=20s {LATE_BACKEND}", forms=("console",)
    ),
}


def scenarioUnits() -> dict[str, str]:
    """
    The socket and service units of every scenario under each of its forms.
    """
    units = {}
    for name, scenario in SCENARIOS.items():
        for form in scenario.forms:
            path = f"etc/systemd/system/{name}-{form}"
            listen = scenario.listen.format(port=scenario.portOf(form))
            units[f"{path}.socket"] = f"[Socket]\n{listen}\n"
            requires = scenario.requires
            if scenario.scrapePort is not None:
                units[f"{path}-metrics.socket"] = (
                    f"[Socket]\nListenStream=127.0.0.1:{scenario.scrapePortOf(form)}\n"
                    f"FileDescriptorName=metrics\nService={name}-{form}.service\n"
                )
                requires += f" {name}-{form}-metrics.socket"
            units[f"{path}.service"] = (
                f"[Unit]\nRequires={requires}\nAfter={requires}\n"
                f"{scenario.unit}\n[Service]\nType=notify\n{scenario.service}"
                f"ExecStart={FORMS[form]} {scenario.arguments}\n"
            )
    return units


NGINX = "/usr/sbin/nginx"


NGINX_CONF = """\
pid /run/spx-nginx.pid;
error_log /run/spx-nginx.error.log;
events {}
http {
    access_log off;
    server {
        listen 127.0.0.1:8090;
        listen unix:/run/spx-nginx.sock;
        root /srv/spx-test/www;
    }
}
"""


HTTP_ROUTES = {
    "http-console-tcp": (8091, f"{SOCKETPROXYD} --connect-retry=5s 127.0.0.1:8090"),
    "http-console-unix": (8092, f"{SOCKETPROXYD} --connect-retry=5s /run/spx-nginx.sock"),
    "http-twistd-tcp": (
        8093,
        f"{TWISTD} --nodaemon --pidfile= socketproxy --connect-retry=5s 127.0.0.1:8090",
    ),
    "http-twistd-unix": (
        8094,
        f"{TWISTD} --nodaemon --pidfile= socketproxy --connect-retry=5s /run/spx-nginx.sock",
    ),
}


def httpUnits() -> dict[str, str]:
    """
    nginx on TCP and on a UNIX socket (as in the seed's example), and a
    proxy in front of each for each C{ExecStart=} form; the proxies start
    nginx and wait for it (C{--connect-retry}) while it opens its sockets.
    """
    units = {
        "srv/spx-test/nginx.conf": NGINX_CONF,
        "srv/spx-test/www/index.html": "socket-activated nginx\n",
        "etc/systemd/system/spx-nginx.service": (
            f"[Service]\nExecStart={NGINX} -c /srv/spx-test/nginx.conf -g 'daemon off;'\n"
        ),
    }
    for name, (port, execStart) in HTTP_ROUTES.items():
        units[f"etc/systemd/system/{name}.socket"] = f"[Socket]\nListenStream=127.0.0.1:{port}\n"
        units[f"etc/systemd/system/{name}.service"] = (
            "[Unit]\nRequires=spx-nginx.service\nAfter=spx-nginx.service\n\n"
            f"[Service]\nType=notify\nExecStart={execStart}\n"
        )
    return units


SLOW_SOURCE = "/srv/spx-test/slow.py"


SLOW_SIZE = 8 << 20


# Sends SLOW_SIZE bytes of a fixed pattern to each client over about two seconds, then closes.
SLOW_SOURCE_CODE = """\
import socket, threading, time

CHUNK = bytes(range(256)) * 256
SIZE = 8 << 20

def serve(conn):
    with conn:
        for _ in range(SIZE // len(CHUNK)):
            conn.sendall(CHUNK)
            time.sleep(0.015)

server = socket.create_server(("127.0.0.1", 8001))
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


# Reads everything from argv[1]:argv[2], saying "started" at the first byte; then the count
# and SHA-256 of what it got.
DOWNLOAD_CODE = """\
import hashlib, socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as sock:
    digest, total = hashlib.sha256(), 0
    while chunk := sock.recv(65536):
        if not total:
            print("started", flush=True)
        digest.update(chunk)
        total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""


EXCHANGE = "/srv/spx-test/exchange.py"


# Against the upper-casing echo backend through argv[1]:argv[2]: send 1 MiB and read its echo,
# wait until argv[3] is active (the proxy said READY=1: Twisted has loaded and it takes the
# early relay's connections over), then send 15 MiB more, half-close, read to the end; print
# the bytes received and whether their SHA-256 is that of what was sent, upper-cased.
EXCHANGE_CODE = """\
import hashlib, socket, subprocess, sys, threading, time
CHUNK = bytes(range(256)) * 256
expected, received, state = hashlib.sha256(), hashlib.sha256(), {"total": 0}
first = threading.Event()
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as sock:
    def read():
        while chunk := sock.recv(65536):
            received.update(chunk)
            state["total"] += len(chunk)
            if state["total"] >= 16 * len(CHUNK):
                first.set()
    reader = threading.Thread(target=read)
    reader.start()
    def send(chunks):
        for _ in range(chunks):
            sock.sendall(CHUNK)
            expected.update(CHUNK.upper())
    send(16)
    first.wait(20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shown = subprocess.run(["systemctl", "show", "-p", "ActiveState", "--value", sys.argv[3]],
                               capture_output=True, text=True).stdout.strip()
        if shown == "active":
            break
        time.sleep(0.01)
    send(240)
    sock.shutdown(socket.SHUT_WR)
    reader.join(20)
print(state["total"], received.hexdigest() == expected.hexdigest())
"""


RESETTER = "/srv/spx-test/resetter.py"


# On 127.0.0.1:8003, ready (READY=1) once listening: read one byte of each client and close,
# leaving the rest unread, which resets the connection.
RESETTER_CODE = """\
import os, socket
server = socket.create_server(("127.0.0.1", 8003))
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    conn, _ = server.accept()
    with conn:
        conn.recv(1)
"""


def treeFiles() -> dict[str, str]:
    """
    Everything written into the container's tree before boot: the backend,
    the client, and one socket/service pair per scenario.
    """
    return {
        BACKEND: BACKEND_SOURCE,
        CLIENT: CLIENT_SOURCE,
        EXCHANGE: EXCHANGE_CODE,
        RESETTER: RESETTER_CODE,
        "etc/systemd/system/resetter.service": (
            f"[Service]\nType=notify\nExecStart={PYTHON} {RESETTER}\n"
        ),
        "etc/systemd/system/backend-unix.service": (
            f"[Service]\nType=notify\nExecStart={PYTHON} {BACKEND} {UNIX_BACKEND}\n"
        ),
        "etc/systemd/system/backend.service": (
            f"[Service]\nType=notify\nExecStart={PYTHON} {BACKEND} 127.0.0.1 8000\n"
        ),
        **scenarioUnits(),
        **httpUnits(),
        "etc/systemd/system/backend-ns.service": (
            "[Service]\nType=notify\nPrivateNetwork=yes\n"
            f"ExecStart={PYTHON} {BACKEND} 127.0.0.1 8010\n"
        ),
        SLOW_SOURCE: SLOW_SOURCE_CODE,
        "etc/systemd/system/dgram-backend.service": (
            f"[Service]\nType=notify\nExecStart={PYTHON} {BACKEND} 127.0.0.1 8002 udp\n"
        ),
        "etc/systemd/system/slow-source.service": f"[Service]\nExecStart={PYTHON} {SLOW_SOURCE}\n",
    }


class SystemdTestCase(SynchronousTestCase):
    """
    The proxy installed as the README says and socket-activated by a real
    systemd, with the console script and with twistd.  One container
    serves the whole class: booted (and the project installed in it) by
    C{setUpClass} (pytest, pyunit) or lazily by the first C{setUp} (trial,
    which does not call C{setUpClass}), and stopped by C{tearDownClass}, by
    the last test's C{tearDown}, or at exit, whichever comes first.
    """

    container: ClassVar[Container | None] = None
    kit: ClassVar[Path | None] = None
    skipReason: ClassVar[str | None] = None
    installError: ClassVar[str | None] = None
    pending: ClassVar[set[str]] = set()

    @classmethod
    def setUpClass(cls) -> None:
        cls.boot()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.shutdown()

    @classmethod
    def boot(cls) -> Container:
        """
        The shared container, booted and the project installed in it on
        first use; skip every test with the reason when it cannot be had,
        and fail every test when the README's install fails in it.
        """
        if cls.skipReason is not None:
            raise SkipTest(cls.skipReason)
        if cls.installError is not None:
            raise AssertionError(cls.installError)
        if cls.container is None:
            cls.pending = {name for name in dir(cls) if name.startswith("test_")}
            try:
                cls.prepare()
            except (ContainerUnavailable, KitUnavailable) as e:
                cls.skipReason = str(e)
                cls.shutdown()
                raise SkipTest(cls.skipReason) from e
            except BaseException as e:
                cls.installError = f"{type(e).__name__}: {e}"
                cls.shutdown()
                raise
        assert cls.container is not None
        return cls.container

    @classmethod
    def prepare(cls) -> None:
        """
        Check that a container can be had here before downloading anything,
        build the install kit, boot, and install as the README says.
        """
        ensureNspawn()
        script = installScript(KIT)
        cls.kit = Path(tempfile.mkdtemp(prefix="spx-kit-"))
        atexit.register(shutil.rmtree, cls.kit, True)
        buildKit(cls.kit)
        cls.container = Container(treeFiles(), binds=[f"{cls.kit}:{KIT}"])
        cls.container.boot()
        installed = cls.container.run(["sh", "-c", script], timeout=INSTALL_TIMEOUT)
        if installed.returncode != 0:
            raise AssertionError(f"the README's install failed:\n{installed.stderr[-3000:]}")

    @classmethod
    def shutdown(cls) -> None:
        """
        Power the shared container off, if booted, and remove the
        install kit.
        """
        if cls.container is not None:
            cls.container.stop()
            cls.container = None
        if cls.kit is not None:
            shutil.rmtree(cls.kit, ignore_errors=True)
            cls.kit = None

    def setUp(self) -> None:
        self.container = self.boot()

    def tearDown(self) -> None:
        self.pending.discard(self._testMethodName)
        if not self.pending:
            self.shutdown()

    def systemctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run systemctl in the container; fail the test if it fails.
        """
        result = self.container.run(["systemctl", "--no-pager", *argv])
        self.assertEqual(result.returncode, 0, f"systemctl {argv}: {result.stderr}")
        return result

    def client(self, port: int, payload: str) -> str:
        """
        What a client inside the container gets for C{payload} sent to
        127.0.0.1:C{port} and then half-closed.
        """
        result = self.container.run([PYTHON, CLIENT, "127.0.0.1", str(port), payload])
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def waitShow(self, unit: str, wanted: dict[str, str], *more: str) -> dict[str, str]:
        """
        Poll C{systemctl show} until C{unit}'s properties have the wanted
        values, and return them with C{more}; fail after L{TIMEOUT}.
        """
        last: dict[str, str] = {}

        def matches() -> dict[str, str] | None:
            nonlocal last
            last = self.container.show(unit, *wanted, *more)
            return last if all(last.get(k) == v for k, v in wanted.items()) else None

        try:
            return waitFor(matches, TIMEOUT, what=f"{unit} {wanted}")
        except TimeoutError:
            self.fail(f"{unit}: wanted {wanted}, still {last}\n{self.journal(unit)}")

    def journal(self, unit: str) -> str:
        """
        C{unit}'s journal as text, for failure messages.
        """
        return self.container.run(["journalctl", "--no-pager", "-u", unit]).stdout

    def journalEntries(self, unit: str, pattern: str) -> list[dict[str, object]]:
        """
        Poll C{unit}'s journal (JSON) until an entry's MESSAGE matches
        C{pattern}; return the matching entries.
        """

        def entries() -> list[dict[str, object]]:
            out = self.container.run(["journalctl", "--no-pager", "-o", "json", "-u", unit]).stdout
            found = [json.loads(line) for line in out.splitlines() if line.strip()]
            return [e for e in found if re.search(pattern, str(e.get("MESSAGE", "")))]

        try:
            return waitFor(entries, TIMEOUT, interval=0.1, what=f"{pattern!r} in {unit}")
        except TimeoutError:
            self.fail(f"no {pattern!r} in the journal of {unit}:\n{self.journal(unit)}")

    def readLine(self, process: subprocess.Popen[str]) -> str:
        """
        The next line of C{process}'s stdout, waiting at most L{TIMEOUT}.
        """
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        self.assertTrue(ready, "no line from the client in time")
        return process.stdout.readline().strip()

    def reap(self, process: subprocess.Popen[str]) -> None:
        """
        Kill C{process} if it still runs, and wait for it.
        """
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)
