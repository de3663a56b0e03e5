"""
End-to-end tests under a real systemd 252: the project installed the way
the README says, and socket units and service units as an operator deploys
them, in a throw-away C{systemd-nspawn} container
(L{tests.systemd.container}).  Skipped when not root, when systemd-nspawn
cannot be had, when the container does not boot, or when the wheels to
install from cannot be downloaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

from twisted.trial.unittest import SkipTest

from .container import waitFor
from .installkit import deploySteps, readmeCommands, routesCommands
from .suite import (
    BACKEND,
    BOTH,
    CLIENT,
    DGRAM_CLIENT,
    DOWNLOAD_CODE,
    EXCHANGE,
    HTTP_ROUTES,
    KIT,
    LATE_BACKEND,
    NGINX,
    PYTHON,
    SCENARIOS,
    SLOW_SIZE,
    STATUS,
    TIMEOUT,
    SystemdTestCase,
    statusText,
)


class SystemdTests(SystemdTestCase):
    """
    What an operator meets under systemd: the example units verify,
    activation, a real nginx behind the proxy, idle exit, stopping with
    clients, the watchdog, network namespaces, drain and datagrams (the
    container is L{SystemdTestCase}'s).
    """

    def test_examplesVerify(self) -> None:
        """
        C{systemd-analyze verify} is clean on every unit of
        examples/systemd/, with the project installed as the README says
        (the venv at /opt/socketproxyd) and the services they name.
        """
        examples = f"{KIT}/src/examples/systemd"
        stubs = " ".join(
            f"printf '[Service]\\nExecStart=/bin/true\\n' > /etc/systemd/system/{name}.service;"
            for name in ("nginx", "postgresql@15-main")
        )
        prepared = self.container.run(["sh", "-c", stubs])
        self.addCleanup(
            self.container.run,
            ["sh", "-c", "rm -f /etc/systemd/system/nginx.service "
             "/etc/systemd/system/postgresql@15-main.service && systemctl daemon-reload"],
        )  # fmt: skip
        self.assertEqual(prepared.returncode, 0, prepared.stderr)
        listed = self.container.run(["ls", examples]).stdout.split()
        units = sorted(name for name in listed if name.endswith((".socket", ".service")))
        self.assertGreaterEqual(len(units), 7)
        verified = self.container.run(
            ["systemd-analyze", "verify", *(f"{examples}/{unit}" for unit in units)]
        )
        self.assertEqual((verified.returncode, verified.stdout + verified.stderr), (0, ""), units)

    def test_deployAsTheReadmeSays(self) -> None:
        """
        The README's "Deploy under systemd" steps, run as written in the
        checkout (the install of step 1 is the suite's own, from the same
        README, with apt-get left out: the container has no network and
        nginx comes from the host): the first request on port 80 starts
        the proxy and Debian's nginx and gets nginx's page; stopping the
        proxy stops nginx, no longer needed; the next request starts both
        again; and with step 5's drop-in, nginx, started again, runs in a
        network namespace of its own and still answers through the proxy.
        """
        self.needDebianNginx()
        install, cache, backend, units, tryIt, privateNetwork = deploySteps()
        self.assertIn(" ".join(readmeCommands()[0].split()), " ".join(install.split()))
        self.assertEqual(cache.strip(), readmeCommands()[1])
        self.addCleanup(
            self.container.run,
            ["systemctl", "disable", "--now", "proxy-to-nginx.socket",
             "proxy-to-nginx-metrics.socket", "proxy-to-nginx.service"],
        )  # fmt: skip
        run, page = self.runInCheckout, self.page
        run(backend)
        run(units)
        self.assertEqual(tryIt, "curl http://localhost/\n")

        self.assertIn("Welcome to nginx!", page())
        for unit in ("proxy-to-nginx.service", "nginx.service"):
            self.waitShow(unit, {"ActiveState": "active"})
        self.systemctl("stop", "proxy-to-nginx.service")
        self.waitShow("nginx.service", {"ActiveState": "inactive"})
        self.assertIn("Welcome to nginx!", page())
        self.waitShow("nginx.service", {"ActiveState": "active"})

        self.assertTrue(self.networkOf().startswith("net:["), self.networkOf())
        self.assertEqual(self.networkOf("nginx.service"), self.networkOf())
        run(privateNetwork)
        self.waitShow("nginx.service", {"ActiveState": "inactive"})
        self.assertIn("Welcome to nginx!", page())
        self.waitShow("nginx.service", {"ActiveState": "active"})
        self.assertTrue(self.networkOf("nginx.service").startswith("net:["))
        self.assertNotEqual(self.networkOf("nginx.service"), self.networkOf())

    def needDebianNginx(self) -> None:
        """
        Skip unless Debian's nginx (its package's configuration and unit)
        is installed; once the test ends, undo what the README's steps 2
        and 5 change about it in the shared container.
        """
        if not os.access(NGINX, os.X_OK) or not os.path.exists("/etc/nginx/nginx.conf"):
            raise SkipTest("Debian's nginx is not installed")
        self.addCleanup(
            self.container.run,
            ["sh", "-c", "systemctl stop nginx.service; "
             "rm -f /etc/nginx/conf.d/proxied.conf /etc/nginx/conf.d/routes.conf "
             "/etc/systemd/system/nginx.service.d/*.conf; "
             "ln -sf /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default; "
             "systemctl daemon-reload"],
        )  # fmt: skip

    def runInCheckout(self, commands: str) -> None:
        """
        Run C{commands} in the container's copy of the checkout, as an
        operator would in theirs; fail with their output if one fails.
        """
        ran = self.container.run(["sh", "-ec", f"cd {KIT}/src\n{commands}"])
        self.assertEqual(ran.returncode, 0, f"{commands}\n{ran.stdout}{ran.stderr}")

    def networkOf(self, unit: str | None = None) -> str:
        """
        The network namespace of C{unit}'s main process (of the
        container's systemd when none is named), as C{/proc} names it.
        """
        pid = self.container.show(unit, "MainPID")["MainPID"] if unit else "1"
        return self.container.run(["readlink", f"/proc/{pid}/ns/net"]).stdout.strip()

    def page(self, url: str = "http://localhost/", serving: str = "nginx.service") -> str:
        """
        The body at C{url}, fetched inside the container; failing with the
        journal of the unit C{serving} it when it cannot be had.
        """
        fetched = self.container.run(
            [PYTHON, "-c", "import sys, urllib.request; print(urllib.request.urlopen("
             "sys.argv[1], timeout=10).read().decode(), end='')", url]
        )  # fmt: skip
        self.assertEqual(fetched.returncode, 0, f"{fetched.stderr}\n{self.journal(serving)}")
        return fetched.stdout

    def test_twistdExampleAsShipped(self) -> None:
        """
        The shipped twistd pair, copied as the README copies the console
        script's, in front of nginx as the README's step 2 sets it up: a
        request on its port 8080 gets nginx's page through the hardened
        service (a dynamic user, a read-only file system), whose journal
        says nothing of the plugin cache.
        """
        self.needDebianNginx()
        backend = deploySteps()[2]
        self.addCleanup(
            self.container.run,
            ["systemctl", "stop", "proxy-to-nginx-twistd.socket", "proxy-to-nginx-twistd.service"],
        )
        self.runInCheckout(backend)
        self.runInCheckout(
            "cp examples/systemd/proxy-to-nginx-twistd.socket "
            "examples/systemd/proxy-to-nginx-twistd.service /etc/systemd/system/\n"
            "systemctl daemon-reload\n"
            "systemctl start proxy-to-nginx-twistd.socket\n"
        )
        self.assertIn("Welcome to nginx!", self.page("http://localhost:8080/"))
        self.waitShow("proxy-to-nginx-twistd.service", {"ActiveState": "active"})
        self.assertNotIn("plugin cache", self.journal("proxy-to-nginx-twistd.service"))

    def test_transparentExampleAsShipped(self) -> None:
        """
        The shipped --transparent pair, copied as the README copies the
        others: its one capability (ambient, for a dynamic user, with no
        new privileges) passes the proxy's start-up probe, and the first
        client starts it. (Connecting from the client's address needs the
        backend on another host and the README's routing: the namespace
        tests of tests/integration/test_transparent.py show that.)
        """
        units = "transparent-postgres.socket transparent-postgres.service"
        self.addCleanup(self.container.run, ["systemctl", "stop", *units.split()])
        self.runInCheckout(
            f"cd examples/systemd && cp {units} /etc/systemd/system/\n"
            "systemctl daemon-reload\n"
            "systemctl start transparent-postgres.socket\n"
        )
        self.assertIn(self.client(5432, "hello"), ("", "<reset>"))
        self.waitShow("transparent-postgres.service", {"ActiveState": "active"})
        self.journalEntries("transparent-postgres.service", r"Failed to connect to 10\.0\.2\.2")
        journal = self.journal("transparent-postgres.service")
        self.assertIn("Listening on", journal)
        self.assertNotIn("needs CAP_NET_ADMIN", journal)

    def test_routesExampleAsShipped(self) -> None:
        """
        The two-route namespace example, deployed by the README's commands
        as written: port 80 gets nginx's page and port 5432 PostgreSQL's
        answer, both through the one hardened proxy, which runs in the
        network namespace of both backends, not in the host's.
        """
        self.needDebianNginx()
        if not os.path.isdir("/etc/postgresql/15/main"):
            raise SkipTest("PostgreSQL 15's main cluster is not installed")
        self.addCleanup(
            self.container.run,
            ["sh", "-c", "systemctl stop routes-web.socket routes-db.socket routes-proxy.service "
             "postgresql@15-main.service; "
             "rm -rf /etc/systemd/system/postgresql@15-main.service.d"],
        )  # fmt: skip
        self.runInCheckout(routesCommands())
        self.assertIn("Welcome to nginx!", self.page())
        ready = self.container.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-t", "20"])
        self.assertEqual(
            ready.returncode, 0, ready.stdout + self.journal("postgresql@15-main.service")
        )

        proxy = self.networkOf("routes-proxy.service")
        self.assertTrue(proxy.startswith("net:["), proxy)
        backends = (self.networkOf("nginx.service"), self.networkOf("postgresql@15-main.service"))
        self.assertEqual(backends, (proxy, proxy))
        self.assertNotEqual(proxy, self.networkOf())

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
            page = self.page(f"http://127.0.0.1:{port}/index.html", f"{name}.service")
            self.assertEqual(page, "socket-activated nginx\n", name)
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

    def test_metricsSocket(self) -> None:
        """
        A second socket unit named C{metrics} (C{FileDescriptorName=}) for
        the same service, as examples/systemd/ has it: a scrape there starts
        the proxy and is answered; the proxied socket's connections are
        counted under its name and the scrapes are not, under both forms.
        """
        scenario = SCENARIOS["metrics"]
        for form in BOTH:
            unit = f"metrics-{form}"
            self.systemctl("start", f"{unit}.socket", f"{unit}-metrics.socket")
            url = f"http://127.0.0.1:{scenario.scrapePortOf(form)}/metrics"
            total = f'socketproxyd_connections_total{{route="{unit}.socket"}}'
            self.assertIn(f"{total} 0.0\n", self.scrape(url))
            self.waitShow(
                f"{unit}.service", {"ActiveState": "active", "StatusText": statusText(unit)}
            )
            for payload in ("one", "two"):
                self.assertEqual(self.client(scenario.portOf(form), payload), payload.upper())
            self.assertIn(f"{total} 2.0\n", self.scrape(url))
            self.journalEntries(
                f"{unit}.service",
                rf"^Serving metrics on 127\.0\.0\.1:{scenario.scrapePortOf(form)} \(metrics\)$",
            )

    def scrape(self, url: str) -> str:
        """
        The exposition at C{url}, fetched inside the container.
        """
        fetch = (
            "import urllib.request; "
            f"print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end='')"
        )
        result = self.container.run([PYTHON, "-c", fetch])
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

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


TAKEOVER = (
    r"^Took over (\d+) connection\(s\) from the early relay after \d+ ms, "
    r"with (\d+) bytes sent to the target and (\d+) to clients$"
)


class EarlyRelayTests(SystemdTestCase):
    """
    The console script's first clients under systemd, served by the early
    relay while Twisted loads and then taken over by the proxy (issue 19):
    exchanges that straddle the hand-over, on a TCP and a UNIX-socket
    backend; a client that half-closes, a client and a backend that reset
    before it; a target that appears only after it; C{-c 1} with three
    clients at activation; ten re-activations after idle exits.
    """

    def takeovers(self, unit: str, count: int = 1) -> list[tuple[int, int, int]]:
        """
        The hand-overs C{unit} logged, once there are C{count}: connections
        taken over, and the bytes the relay moved each way.
        """

        def found() -> list[tuple[int, int, int]] | None:
            out = self.container.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout
            lines = [re.match(TAKEOVER, line) for line in out.splitlines()]
            matches = [tuple(int(g) for g in m.groups()) for m in lines if m]
            return matches if len(matches) >= count else None  # type: ignore[return-value]

        try:
            return waitFor(found, TIMEOUT, interval=0.1, what=f"hand-overs of {unit}")
        except TimeoutError:
            self.fail(f"{unit} took over no connection:\n{self.journal(unit)}")

    def test_exchangeStraddlesTheHandOver(self) -> None:
        """
        16 MiB up and their echo down, begun before the hand-over and
        finished after it, arrive whole (SHA-256), on a TCP and on a
        UNIX-socket target; the relay had moved part of them.
        """
        size = 16 << 20
        for name in ("early", "early-unix"):
            unit, port = f"{name}-console", SCENARIOS[name].portOf("console")
            self.systemctl("start", f"{unit}.socket")
            done = self.container.run(
                [PYTHON, EXCHANGE, "127.0.0.1", str(port), f"{unit}.service"], timeout=60
            )
            self.assertEqual((done.returncode, done.stdout.split()), (0, [str(size), "True"]))
            [(count, upstream, downstream)] = self.takeovers(f"{unit}.service")
            self.assertEqual(count, 1, name)
            self.assertTrue(0 < upstream < size, (name, upstream))
            self.assertTrue(0 < downstream < size, (name, downstream))
            self.journalEntries(f"{unit}.service", rf"{size} bytes up, {size} bytes down, .*, done")

    def test_clientResetBeforeTheHandOver(self) -> None:
        """
        A client that resets right after its request: the proxy resets
        the backend's side too, and the close line says so.
        """
        unit, port = "early-reset-console", SCENARIOS["early-reset"].portOf("console")
        self.systemctl("start", f"{unit}.socket")
        code = (
            "import socket, struct, sys\n"
            "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            "s.sendall(b'x')\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
            "s.close()\n"
        )
        done = self.container.run([PYTHON, "-c", code, str(port)])
        self.assertEqual(done.returncode, 0, done.stderr)
        self.journalEntries(f"{unit}.service", r", reset$")
        self.assertGreaterEqual(len(self.takeovers(f"{unit}.service")), 1)

    def test_halfCloseBeforeTheHandOver(self) -> None:
        """
        A client that sends its request and half-closes at once, before
        the hand-over, gets the whole answer and the connection ends done.
        """
        unit, port = "early-half-console", SCENARIOS["early-half"].portOf("console")
        self.systemctl("start", f"{unit}.socket")
        self.assertEqual(self.client(port, "request"), "REQUEST")
        self.assertEqual(self.takeovers(f"{unit}.service")[0][0], 1)
        self.journalEntries(f"{unit}.service", r": 7 bytes up, 7 bytes down, .*, done$")

    def test_backendResetBeforeTheHandOver(self) -> None:
        """
        A backend that resets the connection before the hand-over: the
        client is reset too, and the close line says so.
        """
        unit, port = "early-rst-console", SCENARIOS["early-rst"].portOf("console")
        self.systemctl("start", f"{unit}.socket")
        self.assertEqual(self.client(port, "xy"), "<reset>")
        self.assertEqual(self.takeovers(f"{unit}.service")[0][0], 1)
        self.journalEntries(f"{unit}.service", r": 2 bytes up, 0 bytes down, .*, reset$")

    def test_missingTargetWaitedFor(self) -> None:
        """
        With C{--connect-retry}, a client at activation whose UNIX target
        is not there yet is handed over unconnected, waits for the target
        and is answered once it appears; the proxy says it waited.
        """
        unit, port = "early-retry-console", SCENARIOS["early-retry"].portOf("console")
        self.systemctl("start", f"{unit}.socket")
        client = self.container.spawn([PYTHON, CLIENT, "127.0.0.1", str(port), "late"])
        self.addCleanup(lambda: client.poll() is None and client.kill())
        self.waitShow(f"{unit}.service", {"ActiveState": "active"})
        started = self.container.run(
            ["systemd-run", "--unit=spx-late", "-p", "Type=notify", PYTHON, BACKEND, LATE_BACKEND]
        )
        self.assertEqual(started.returncode, 0, started.stderr)
        self.addCleanup(self.container.run, ["systemctl", "stop", "spx-late.service"])
        out, _ = client.communicate(timeout=30)
        self.assertEqual(out, "LATE")
        self.assertEqual(self.takeovers(f"{unit}.service"), [(1, 0, 0)])
        self.journalEntries(f"{unit}.service", r"is not ready .*clients wait up to 20s")

    def test_limitWithThreeClientsAtActivation(self) -> None:
        """
        At C{-c 1}, three clients connecting at once start the service and
        are each answered, one after the other.
        """
        unit, port = "early-limit-console", SCENARIOS["early-limit"].portOf("console")
        self.systemctl("start", f"{unit}.socket")
        clients = [
            self.container.spawn([PYTHON, CLIENT, "127.0.0.1", str(port), f"client {n}"])
            for n in range(3)
        ]
        for client in clients:
            self.addCleanup(lambda c=client: c.poll() is None and c.kill())
        for number, client in enumerate(clients):
            out, _ = client.communicate(timeout=30)
            self.assertEqual(out, f"CLIENT {number}")
        [(count, _, _)] = self.takeovers(f"{unit}.service")
        self.assertEqual(count, 1)
        self.journalEntries(f"{unit}.service", r"bytes down, .*, done$")

    def test_tenReactivations(self) -> None:
        """
        With C{--exit-idle-time=1s}, ten clients in a row, each after the
        proxy exited idle: each starts it anew and is answered, and each
        time the early relay served it. (Ten starts in ten seconds are more
        than systemd's default start limit allows any service, so the unit
        lifts it, as an operator with so short an idle time must.)
        """
        unit, port = "early-idle-console", SCENARIOS["early-idle"].portOf("console")
        idle = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        self.systemctl("start", f"{unit}.socket")
        starts = set()
        for number in range(10):
            self.assertEqual(self.client(port, f"round {number}"), f"ROUND {number}")
            shown = self.waitShow(f"{unit}.service", idle, "ExecMainStartTimestampMonotonic")
            starts.add(shown["ExecMainStartTimestampMonotonic"])
        self.assertEqual(len(starts), 10)
        self.assertEqual(len(self.takeovers(f"{unit}.service", 10)), 10)
