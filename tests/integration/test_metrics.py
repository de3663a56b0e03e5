"""
C{--metrics=ENDPOINT} on the real console script: what a scraper reads
after known traffic, the HTTP it answers, that a scrape is not a
connection, and that without the option the libraries are not imported.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.metrics.scrapes import KEPT_SCRAPES
from tests.support.processes import ConsoleScriptTestCase
from tests.support.scraping import request, samples, scrapeKeepingAlive
from tests.support.sockets import Backend, connect, echo, ping, recvAll, unixPath, waitUntil


def refuses(address: str) -> bool:
    """
    Whether nothing listens on C{address} any more.
    """
    try:
        connect(address, timeout=1).close()
    except OSError:
        return True
    return False


class MetricsTests(ConsoleScriptTestCase):
    def startWithMetrics(self, *args: str) -> tuple[str, str]:
        backend = Backend(self, echo)
        metrics = unixPath(self, "metrics.sock")
        self.proxy, address = self.start(backend.address, f"--metrics=unix:{metrics}", *args)
        self.assertTrue(waitUntil(lambda: self.answers(metrics)), "no metrics socket")
        return address, metrics

    def answers(self, path: str) -> bool:
        try:
            return request(path)[0].endswith("200 OK")
        except OSError:
            return False

    def test_trafficCounted(self) -> None:
        """
        After five closed connections of 100 bytes each way and one held
        open with 10, the scrape says exactly that.
        """
        address, metrics = self.startWithMetrics()
        for i in range(5):
            self.assertEqual(ping(address, bytes([i]) * 100), bytes([i]) * 100)
        route = ("route", "")
        done = ("socketproxyd_connections_closed_total", (("ending", "done"), route))
        self.assertTrue(waitUntil(lambda: samples(metrics).get(done) == 5), samples(metrics))
        with connect(address) as held:
            held.sendall(b"x" * 10)
            self.assertEqual(held.recv(10), b"x" * 10)
            self.assertTrue(
                waitUntil(
                    lambda: (
                        samples(metrics)[
                            "socketproxyd_bytes_total", (("direction", "downstream"), route)
                        ]
                        == 510
                    )
                )
            )
            found = samples(metrics)
        self.assertEqual(found["socketproxyd_connections_total", (route,)], 6)
        self.assertEqual(found["socketproxyd_connections_active", (route,)], 1)
        self.assertEqual(found["socketproxyd_bytes_total", (("direction", "upstream"), route)], 510)
        self.assertEqual(found["socketproxyd_connections_max", ()], 256)
        for histogram in ("connect_duration_seconds", "connection_duration_seconds"):
            self.assertEqual(found[f"socketproxyd_{histogram}_count", (route,)], 5, histogram)
        self.assertGreater(found["process_resident_memory_bytes", ()], 0)

    def test_http(self) -> None:
        """
        C{HEAD} gives the headers of C{GET} and no body; other paths are 404,
        other methods 405.
        """
        _, metrics = self.startWithMetrics()
        status, headers, body = request(metrics, "HEAD")
        self.assertTrue(status.endswith("200 OK"), status)
        self.assertIn("content-type: text/plain", headers)
        self.assertRegex(headers, r"content-length: [1-9]")
        self.assertEqual(body, b"")
        self.assertIn(" 404 ", request(metrics, target="/")[0])
        self.assertIn(" 404 ", request(metrics, target="/metrics/x")[0])
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "FOO"):
            status, headers, _ = request(metrics, method)
            self.assertIn(" 405 ", status, method)
            self.assertIn("allow: get, head", headers, method)
        status, headers, body = request(
            metrics, accept="application/openmetrics-text; version=1.0.0; charset=utf-8"
        )
        self.assertIn("content-type: application/openmetrics-text", headers)
        self.assertTrue(body.endswith(b"# EOF\n"), body[-40:])
        self.assertEqual(self.proxy.stop(), 0)
        self.assertIn(f"Serving metrics on {metrics} (unix:{metrics})\n", self.proxy.stderr)
        self.assertNotIn("GET /metrics", self.proxy.stderr)
        self.assertNotIn("starting on", self.proxy.stderr)

    def test_scrapeAtTheLimit(self) -> None:
        """
        A scrape is not a connection: at C{-c 1} with the one connection
        held, it is answered, and it is not counted.
        """
        address, metrics = self.startWithMetrics("-c", "1")
        with connect(address) as held:
            held.sendall(b"x")
            self.assertEqual(held.recv(1), b"x")
            found = samples(metrics)
        self.assertEqual(found["socketproxyd_connections_total", (("route", ""),)], 1)

    def test_scrapeOutOfDescriptors(self) -> None:
        """
        With RLIMIT_NOFILE at 64 and the proxied connections holding every
        descriptor they may (more clients wait in the backlog),
        L{KEPT_SCRAPES} scrapers that keep their connections are answered,
        twice each, with the count of what is served; once they close, a
        scrape on a new connection is answered too, and every client's
        bytes arrive.
        """
        backend = Backend(self, echo)
        metrics = unixPath(self, "metrics.sock")
        proxy, address, served = self.startWithFewDescriptors(
            backend.address, f"--metrics=unix:{metrics}"
        )
        self.assertTrue(5 <= served < 30, served)
        clients = []
        for i in range(served + 5):
            sock = connect(address, timeout=30)
            sock.sendall(b"%03d" % i)
            clients.append(sock)
        self.assertTrue(backend.waitFor(lambda: backend.accepted >= served))
        active = f'socketproxyd_connections_active{{route=""}} {served}.0\n'
        scrapers = [connect(metrics) for _ in range(KEPT_SCRAPES)]
        for _ in range(2):
            for scraper in scrapers:
                status, body = scrapeKeepingAlive(scraper)
                self.assertEqual((status, active in body), ("HTTP/1.1 200 OK", True), body)
        for scraper in scrapers:
            scraper.close()
        self.assertEqual(
            samples(metrics)["socketproxyd_connections_active", (("route", ""),)], served
        )
        self.assertEqual(backend.accepted, served)
        for i, sock in enumerate(clients):
            self.assertEqual(recvAll(sock, 3), b"%03d" % i)
            if i < served:
                sock.close()
        for sock in clients:
            sock.close()
        self.assertEqual(proxy.stop(), 0)
        self.assertNotIn("Traceback", proxy.stderr)

    def test_inheritedByName(self) -> None:
        """
        C{--metrics=NAME} serves metrics on the inherited socket of that
        name, which is not proxied; the others are.
        """
        backend = Backend(self, echo)
        proxy, [proxied, metrics] = self.startProxy(
            backend.address,
            "--metrics=metrics",
            listeners=("ipv4", "ipv4"),
            fdnames=["web", "metrics"],
        )
        self.assertEqual(ping(proxied), b"ping")
        found = samples(metrics)
        self.assertEqual(found["socketproxyd_connections_total", (("route", "web"),)], 1)
        self.assertEqual(proxy.stop(), 0)
        self.assertIn(f"Serving metrics on {metrics} (metrics)\n", proxy.stderr)
        self.assertEqual(backend.accepted, 1)

    def test_scrapeDuringDrain(self) -> None:
        """
        On SIGTERM with a drain under way, the metrics listener is still
        open and says what is left; it closes once the drain is over.
        """
        address, metrics = self.startWithMetrics("--drain-timeout=20s")
        with connect(address) as held:
            held.sendall(b"x")
            self.assertEqual(held.recv(1), b"x")
            self.proxy.popen.send_signal(signal.SIGTERM)
            self.assertTrue(waitUntil(lambda: refuses(address)), "still accepting")
            found = samples(metrics)
            self.assertEqual(found["socketproxyd_connections_active", (("route", ""),)], 1)
        self.assertEqual(self.proxy.wait(), 0)
        self.assertFalse(self.answers(metrics))

    def test_concurrentScrapes(self) -> None:
        """
        100 scrapes at once while connections flow are all answered, and
        every proxied byte arrives.
        """
        address, metrics = self.startWithMetrics()
        statuses: list[str] = []
        pings: list[bytes] = []

        def scrape() -> None:
            statuses.append(request(metrics)[0])

        def traffic() -> None:
            for i in range(20):
                pings.append(ping(address, bytes([i]) * 1000))

        threads = [threading.Thread(target=scrape) for _ in range(100)]
        threads.append(threading.Thread(target=traffic))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(len(statuses), 100)
        self.assertTrue(all(status.endswith("200 OK") for status in statuses), statuses)
        self.assertEqual(pings, [bytes([i]) * 1000 for i in range(20)])

    def test_slowScraper(self) -> None:
        """
        A scraper that sends its request one byte at a time holds neither
        other scrapes nor proxied connections, and is answered in the end.
        """
        address, metrics = self.startWithMetrics()
        with connect(metrics) as slow:
            for byte in b"GET /metrics HTTP/1.0\r\n":
                slow.sendall(bytes([byte]))
                self.assertEqual(ping(address), b"ping")
            self.assertTrue(samples(metrics))
            slow.sendall(b"\r\n")
            self.assertTrue(recvAll(slow).startswith(b"HTTP/1.0 200 OK"))

    def test_exitIdleWhileScraped(self) -> None:
        """
        A scraper every 200 ms does not hold C{--exit-idle-time=1s} off:
        the proxy exits 0 on time.
        """
        backend = Backend(self, echo)
        metrics = unixPath(self, "metrics.sock")
        started = time.monotonic()
        proxy, _ = self.start(backend.address, f"--metrics=unix:{metrics}", "--exit-idle-time=1s")
        scrapes = 0
        while proxy.running() and time.monotonic() - started < 10:
            try:
                samples(metrics)
                scrapes += 1
            except (OSError, AssertionError):
                # Refused before the proxy listens, or accepted by the kernel in the last
                # moment of its exit and closed unanswered: not a scrape, and not counted.
                pass
            time.sleep(0.2)
        self.assertEqual(proxy.wait(), 0)
        self.assertLess(time.monotonic() - started, 5)
        self.assertGreater(scrapes, 2)

    def test_silentScraper(self) -> None:
        """
        A client that opens the metrics socket and sends nothing holds
        neither other scrapes nor the proxied connections.
        """
        address, metrics = self.startWithMetrics()
        with connect(metrics) as silent:
            silent.sendall(b"GET /metr")
            self.assertEqual(ping(address), b"ping")
            self.assertEqual(
                samples(metrics)["socketproxyd_connections_total", (("route", ""),)], 1
            )


class NotImportedTests(SynchronousTestCase):
    def test_withoutMetrics(self) -> None:
        """
        Without C{--metrics}, building and starting the proxy imports
        neither prometheus_client nor twisted.web.
        """
        code = (
            "import sys\n"
            "from twisted.internet import reactor\n"
            "from socketproxyd.tap import Options, makeService\n"
            "options = Options()\n"
            "options.parseOptions(['--listen=tcp:0:interface=127.0.0.1', '127.0.0.1:1'])\n"
            "makeService(options, reactor).startService()\n"
            "print(sorted(m for m in sys.modules if m.startswith(('prometheus', 'twisted.web'))))\n"
        )
        found = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(found.returncode, 0, found.stderr)
        self.assertEqual(found.stdout, "[]\n")
