"""
End-to-end tests under a real systemd 252: the project installed the way
the README says, and socket units and service units as an operator deploys
them, in a throw-away C{systemd-nspawn} container
(L{tests.systemd_container}).  Skipped when not root, when systemd-nspawn
cannot be had, when the container does not boot, or when the wheels to
install from cannot be downloaded.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .installkit import PREFIX, KitUnavailable, buildKit, installScript
from .systemd_container import Container, ContainerUnavailable, ensureNspawn, waitFor

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
# case, ready (READY=1) once listening.
BACKEND_SOURCE = """\
import os, socket, sys, threading

def serve(conn):
    with conn:
        while chunk := conn.recv(65536):
            conn.sendall(chunk.upper())

address = (sys.argv[1], int(sys.argv[2]))
datagrams = sys.argv[3:] == ["udp"]
if datagrams:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(address)
else:
    server = socket.create_server(address)
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
    C{listen} is the socket unit's line.
    """

    port: int
    arguments: str
    forms: tuple[str, ...] = BOTH
    requires: str = "backend.service"
    unit: str = ""
    service: str = ""
    listen: str = "ListenStream=127.0.0.1:{port}"

    def portOf(self, form: str) -> int:
        """
        The port of this scenario's socket unit for C{form}.
        """
        return self.port + self.forms.index(form)


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
            units[f"{path}.service"] = (
                f"[Unit]\nRequires={scenario.requires}\nAfter={scenario.requires}\n"
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


def treeFiles() -> dict[str, str]:
    """
    Everything written into the container's tree before boot: the backend,
    the client, and one socket/service pair per scenario.
    """
    return {
        BACKEND: BACKEND_SOURCE,
        CLIENT: CLIENT_SOURCE,
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


class SystemdTests(SynchronousTestCase):
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

    def test_examplesVerify(self) -> None:
        """
        C{systemd-analyze verify} is clean on every unit of
        examples/systemd/, with the project installed as the README says
        (the venv at /opt/socketproxyd) and the services they name.
        """
        examples = f"{KIT}/src/examples/systemd"
        stubs = " ".join(
            f"printf '[Service]\\nExecStart=/bin/true\\n' > /etc/systemd/system/{name}.service;"
            for name in ("nginx", "postgresql")
        )
        prepared = self.container.run(["sh", "-c", stubs])
        self.assertEqual(prepared.returncode, 0, prepared.stderr)
        listed = self.container.run(["ls", examples]).stdout.split()
        units = sorted(name for name in listed if name.endswith((".socket", ".service")))
        self.assertGreaterEqual(len(units), 7)
        verified = self.container.run(
            ["systemd-analyze", "verify", *(f"{examples}/{unit}" for unit in units)]
        )
        self.assertEqual((verified.returncode, verified.stdout + verified.stderr), (0, ""), units)

    def test_activation(self) -> None:
        """
        Under each form, the first client starts the service through its
        socket and is answered; the unit becomes active (for Type=notify,
        on the proxy's READY=1: systemd logs "Started") and shows the
        STATUS= text; the proxy's "Listening on" is at info priority and
        without a timestamp of its own.  It runs as a user that
        cannot write the install (C{DynamicUser=yes}), which with the
        plugin cache built as the README says logs nothing about that cache.
        """
        for form in BOTH:
            unit = f"proxy-{form}"
            self.systemctl("start", f"{unit}.socket")
            port = SCENARIOS["proxy"].portOf(form)
            self.assertEqual(self.client(port, f"hello {form}"), f"HELLO {form.upper()}")
            shown = self.waitShow(
                f"{unit}.service", {"ActiveState": "active", "SubState": "running"}, "StatusText"
            )
            self.assertRegex(shown["StatusText"], STATUS.format(unit=unit))
            self.waitShow(f"{unit}.service", {"StatusText": statusText(unit)})
            self.journalEntries(f"{unit}.service", rf"^Started {unit}\.service")
            for entry in self.journalEntries(f"{unit}.service", r"Listening on"):
                self.assertRegex(str(entry["MESSAGE"]), rf"^Listening on 127\.0\.0\.1:{port} ")
                self.assertEqual(entry["PRIORITY"], "6", form)
            self.assertNotIn("plugin cache", self.journal(f"{unit}.service"))

    def test_nginx(self) -> None:
        """
        A real HTTP server behind the proxy, on a TCP target and on a UNIX
        socket target, under both C{ExecStart=} forms: the first request
        starts the proxy (and nginx) and is answered.
        """
        if not os.access(NGINX, os.X_OK):
            raise SkipTest("nginx is not installed")
        for name, (port, _) in HTTP_ROUTES.items():
            self.systemctl("start", f"{name}.socket")
            fetch = (
                "import urllib.request; "
                f"print(urllib.request.urlopen('http://127.0.0.1:{port}/index.html', "
                "timeout=10).read().decode(), end='')"
            )
            result = self.container.run([PYTHON, "-c", fetch])
            self.assertEqual(
                (result.returncode, result.stdout),
                (0, "socket-activated nginx\n"),
                f"{name}: {result.stderr}\n{self.journal(name + '.service')}",
            )
            self.waitShow(f"{name}.service", {"ActiveState": "active"})

    def test_warningsOnly(self) -> None:
        """
        C{journalctl -p warning} shows exactly the proxy's warnings, under
        both forms and under twist: every failed connect, one per client,
        at warning priority, and nothing else; and no line is twist's JSON
        (which journald would keep as blob data).
        """
        scenario = SCENARIOS["dead"]
        for form in scenario.forms:
            unit = f"dead-{form}"
            self.systemctl("start", f"{unit}.socket")
            for payload in ("one", "two"):
                self.assertIn(self.client(scenario.portOf(form), payload), ("", "<reset>"))
            failed = self.journalEntries(f"{unit}.service", r"Failed to connect")
            self.assertEqual({entry["PRIORITY"] for entry in failed}, {"4"}, form)
            self.waitShow(f"{unit}.service", {"ActiveState": "active"})

            def warnings(unit: str = unit) -> list[str] | None:
                out = self.container.run(
                    ["journalctl", "--no-pager", "-o", "cat", "-p", "warning", "-u",
                     f"{unit}.service"]
                ).stdout  # fmt: skip
                lines = out.splitlines()
                return lines if len(lines) >= 2 else None

            lines = waitFor(warnings, TIMEOUT, interval=0.1, what=f"warnings of {unit}")
            everything = self.journal(f"{unit}.service")
            self.assertEqual(len(lines), everything.count("Failed to connect"), everything)
            for line in lines:
                self.assertRegex(line, rf"^{unit}\.socket: Failed to connect to 127\.0\.0\.1:9 ")
            self.assertNotIn("blob data", everything)
            self.assertNotIn("{", everything)

    def test_exitIdleTime(self) -> None:
        """
        With --exit-idle-time=1s the service exits successfully once idle
        while its socket keeps listening, and the next client starts it
        again and gets its bytes, under both forms.
        """
        for form in BOTH:
            unit, port = f"idle-{form}", SCENARIOS["idle"].portOf(form)
            idle = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
            self.systemctl("start", f"{unit}.socket")
            self.assertEqual(self.client(port, "first"), "FIRST")
            first = self.waitShow(f"{unit}.service", idle, "ExecMainStartTimestampMonotonic")
            self.waitShow(f"{unit}.socket", {"ActiveState": "active", "SubState": "listening"})
            self.assertEqual(self.client(port, "second"), "SECOND")
            second = self.container.show(f"{unit}.service", "ExecMainStartTimestampMonotonic")
            self.assertNotEqual(
                first["ExecMainStartTimestampMonotonic"],
                second["ExecMainStartTimestampMonotonic"],
                form,
            )
            self.waitShow(f"{unit}.service", idle)

    def test_stopWithClient(self) -> None:
        """
        C{systemctl stop} with a client connected ends the service quickly
        as inactive, not failed, and the client sees its connection end,
        under both forms.
        """
        for form in BOTH:
            unit, port = f"stop-{form}", SCENARIOS["stop"].portOf(form)
            self.systemctl("start", f"{unit}.socket")
            client = self.container.spawn([PYTHON, CLIENT, "127.0.0.1", str(port), "hold", "hold"])
            self.addCleanup(self.reap, client)
            self.assertEqual(self.readLine(client), "HOLD")
            self.waitShow(
                f"{unit}.service", {"ActiveState": "active", "StatusText": statusText(unit, 1)}
            )
            started = time.monotonic()
            self.systemctl("stop", f"{unit}.service")
            self.assertLess(time.monotonic() - started, 5.0, form)
            shown = self.container.show(f"{unit}.service", "ActiveState", "Result")
            self.assertEqual(shown, {"ActiveState": "inactive", "Result": "success"}, form)
            self.assertIn(self.readLine(client), ("eof", "reset"))

    def test_watchdog(self) -> None:
        """
        With C{WatchdogSec=} the proxy's pings keep it alive past the
        interval; a proxy whose event loop is stopped (SIGSTOP) is killed
        by the watchdog and restarted, and the next client is served, under
        both forms.
        """
        for form in BOTH:
            unit, port = f"watchdog-{form}", SCENARIOS["watchdog"].portOf(form)
            self.systemctl("start", f"{unit}.socket")
            self.assertEqual(self.client(port, "fed"), "FED")
            first = self.waitShow(
                f"{unit}.service",
                {"ActiveState": "active"},
                "MainPID",
                "ExecMainStartTimestampMonotonic",
            )
            started = int(first["ExecMainStartTimestampMonotonic"])

            def pingedLate(unit: str = unit, started: int = started) -> bool:
                shown = self.container.show(f"{unit}.service", "WatchdogTimestampMonotonic")
                return int(shown["WatchdogTimestampMonotonic"] or 0) - started > 2_000_000

            waitFor(
                pingedLate, TIMEOUT, interval=0.2, what=f"{unit}'s pings past twice the interval"
            )
            alive = self.container.show(f"{unit}.service", "ActiveState", "MainPID")
            self.assertEqual(alive, {"ActiveState": "active", "MainPID": first["MainPID"]}, form)
            self.systemctl("kill", "--signal=SIGSTOP", f"{unit}.service")

            def restarted(unit: str = unit) -> dict[str, str] | None:
                shown = self.container.show(f"{unit}.service", "MainPID", "NRestarts")
                return shown if shown["NRestarts"] != "0" and shown["MainPID"] != "0" else None

            waitFor(restarted, TIMEOUT, interval=0.1, what=f"a restart of {unit} by the watchdog")
            self.assertEqual(self.client(port, "again"), "AGAIN")
            self.assertIn("Watchdog timeout", self.journal(f"{unit}.service"))

    def test_namespace(self) -> None:
        """
        The seed's namespace example: a backend in a private network
        (C{PrivateNetwork=yes}) is unreachable from outside it, and a proxy
        joining its namespace (C{JoinsNamespaceOf=}) makes it reachable
        through the socket systemd holds outside, under both forms.
        """
        for form in BOTH:
            self.systemctl("start", f"ns-{form}.socket")
            self.assertEqual(self.client(SCENARIOS["ns"].portOf(form), form), form.upper())
        self.waitShow("backend-ns.service", {"ActiveState": "active"})
        outside = self.container.run([PYTHON, CLIENT, "127.0.0.1", "8010", "direct"])
        self.assertNotEqual(outside.returncode, 0)
        self.assertIn("ConnectionRefusedError", outside.stderr)

    def test_drainOnStop(self) -> None:
        """
        With C{--drain-timeout}, C{systemctl stop} during a download lets it
        finish byte for byte, then the service ends inactive, not failed,
        under both forms.
        """
        pattern = bytes(range(256)) * 256
        expected = hashlib.sha256(pattern * (SLOW_SIZE // len(pattern))).hexdigest()
        for form in BOTH:
            unit, port = f"drain-{form}", SCENARIOS["drain"].portOf(form)
            self.systemctl("start", f"{unit}.socket")
            download = self.container.spawn([PYTHON, "-c", DOWNLOAD_CODE, "127.0.0.1", str(port)])
            self.addCleanup(self.reap, download)
            self.assertEqual(self.readLine(download), "started")
            self.systemctl("stop", f"{unit}.service")
            self.assertEqual(self.readLine(download), f"{SLOW_SIZE} {expected}", form)
            shown = self.container.show(f"{unit}.service", "ActiveState", "Result")
            self.assertEqual(shown, {"ActiveState": "inactive", "Result": "success"}, form)

    def test_datagrams(self) -> None:
        """
        C{ListenDatagram=PORT} (a wildcard dual-stack socket): the first
        datagram starts the proxy and is answered, under both forms, and
        every reply comes from the address the client wrote to, on IPv4
        (127.0.0.2, not the routing table's 127.0.0.1) and on IPv6.
        """
        for form in BOTH:
            unit, port = f"dgram-{form}", SCENARIOS["dgram"].portOf(form)
            self.systemctl("start", f"{unit}.socket")
            for host in ("127.0.0.2", "::1", "127.0.0.1"):
                result = self.container.run([PYTHON, "-c", DGRAM_CLIENT, host, str(port), form])
                self.assertEqual(
                    (result.returncode, result.stdout.strip()),
                    (0, f"{form.upper()} {host}"),
                    f"{unit} {host}: {result.stderr}\n{self.journal(unit + '.service')}",
                )
            self.waitShow(f"{unit}.service", {"ActiveState": "active"})

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
