"""
A real Prometheus (Debian's C{prometheus}) scrapes the proxy every 200 ms
while known traffic flows on three routes, and its HTTP API then answers
exactly the connections, endings and bytes that were sent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request

from twisted.trial.unittest import SkipTest

from tests.support.processes import ConsoleScriptTestCase
from tests.support.sockets import Backend, echo, ping, waitUntil

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on now.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusTests(ConsoleScriptTestCase):
    def setUp(self) -> None:
        super().setUp()
        if not os.access(PROMETHEUS, os.X_OK):
            raise SkipTest("prometheus is not installed (apt-get install prometheus)")

    def startPrometheus(self, target: str) -> str:
        """
        Prometheus scraping C{target} every 200 ms, its data in a temporary
        directory; the address of its HTTP API once it is ready.
        """
        directory = tempfile.mkdtemp(prefix="spx-prometheus-")
        self.addCleanup(shutil.rmtree, directory, True)
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n"
                "scrape_configs:\n  - job_name: proxy\n"
                f"    static_configs:\n      - targets: ['{target}']\n"
            )
        web = f"127.0.0.1:{freePort()}"
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory}/data",
                f"--web.listen-address={web}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.terminate)
        self.assertTrue(waitUntil(lambda: self.ready(web), 60), "prometheus did not start")
        return web

    def ready(self, web: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{web}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, web: str, expression: str) -> dict[tuple[tuple[str, str], ...], float]:
        """
        The instant vector of C{expression}: each series' labels (without
        its name, job and instance) and value.
        """
        url = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        self.assertEqual(answer["status"], "success", answer)
        return {
            tuple(
                sorted(
                    (k, v)
                    for k, v in r["metric"].items()
                    if k not in ("__name__", "job", "instance")
                )
            ): float(r["value"][1])
            for r in answer["data"]["result"]
        }

    def test_scrapedCounts(self) -> None:
        backend = Backend(self, echo)
        metrics = f"127.0.0.1:{freePort()}"
        _, [web, db, dead] = self.startProxy(
            None,
            f"--metrics=tcp:{metrics.rpartition(':')[2]}:interface=127.0.0.1",
            f"--target=web={backend.address}",
            f"--target=db={backend.address}",
            "--target=dead=127.0.0.1:1",
            listeners=("ipv4", "ipv4", "ipv4"),
            fdnames=["web", "db", "dead"],
        )
        prometheus = self.startPrometheus(metrics)
        for _ in range(4):
            self.assertEqual(ping(web, b"w" * 100), b"w" * 100)
        for _ in range(2):
            self.assertEqual(ping(db, b"d" * 30), b"d" * 30)
        with socket.create_connection(tuple(dead.rsplit(":", 1)), timeout=10) as refused:
            self.assertEqual(refused.recv(10), b"")

        def closed() -> dict[tuple[tuple[str, str], ...], float]:
            return self.query(prometheus, "socketproxyd_connections_closed_total")

        expected = {
            (("ending", "done"), ("route", "web")): 4.0,
            (("ending", "done"), ("route", "db")): 2.0,
            (("ending", "connect_failed"), ("route", "dead")): 1.0,
            (("ending", "done"), ("route", "dead")): 0.0,
        }
        self.assertTrue(waitUntil(lambda: closed() == expected, 30), closed())
        self.assertEqual(
            self.query(prometheus, "socketproxyd_bytes_total"),
            {
                (("direction", "upstream"), ("route", "web")): 400.0,
                (("direction", "downstream"), ("route", "web")): 400.0,
                (("direction", "upstream"), ("route", "db")): 60.0,
                (("direction", "downstream"), ("route", "db")): 60.0,
                (("direction", "upstream"), ("route", "dead")): 0.0,
                (("direction", "downstream"), ("route", "dead")): 0.0,
            },
        )
        self.assertEqual(
            self.query(prometheus, "socketproxyd_connections_total"),
            {(("route", "web"),): 4.0, (("route", "db"),): 2.0, (("route", "dead"),): 1.0},
        )
        self.assertEqual(self.query(prometheus, "up"), {(): 1.0})
