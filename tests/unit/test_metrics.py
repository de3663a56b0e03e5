"""
The metrics exporter as a consumer of the ledger: totals of what closed
plus the counts of what is open, every family documented, in the
exposition Prometheus parses.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.events import Ending
from socketproxyd.metrics.collector import MetricsCollector
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from tests.support.fakes import FakeListening, FakeRouteServer, FakeServed

DOCUMENTED = {
    "socketproxyd_connections_active": "gauge",
    "socketproxyd_connections": "counter",
    "socketproxyd_connections_closed": "counter",
    "socketproxyd_bytes": "counter",
    "socketproxyd_sessions_active": "gauge",
    "socketproxyd_sessions": "counter",
    "socketproxyd_datagrams": "counter",
    "socketproxyd_datagram_bytes": "counter",
    "socketproxyd_connections_max": "gauge",
    "socketproxyd_limit_reached": "counter",
    "socketproxyd_descriptor_exhaustion": "counter",
    "socketproxyd_connect_duration_seconds": "histogram",
    "socketproxyd_connection_duration_seconds": "histogram",
    "socketproxyd_connect_retries": "counter",
    "socketproxyd_datagrams_dropped": "counter",
    "socketproxyd_build_info": "gauge",
}


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.limit = ConnectionLimit(self.clock, 100)
        self.ledger = Ledger(self.limit)
        self.listening = FakeListening()
        self.collector = MetricsCollector(self.clock, self.ledger, self.limit, self.listening)
        self.ledger.follow(self.collector, opens=False)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)

    def scrape(self) -> dict[str, object]:
        """
        The exposition, parsed by prometheus_client's own parser: every
        family by name, and each sample's value by name and labels.
        """
        text = generate_latest(self.registry).decode()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in self.families.values()
            for s in f.samples
        }

    def test_documented(self) -> None:
        """
        Every family is there with its type and a HELP text, before any
        client came.
        """
        self.scrape()
        self.assertEqual({n: f.type for n, f in self.families.items()}, DOCUMENTED)
        for family in self.families.values():
            self.assertTrue(family.documentation, family.name)

    def test_routesFromTheStart(self) -> None:
        """
        Every listener's route has its series at zero before its first
        client: connections (closed as done among them) and bytes of a
        stream route, sessions,
        datagrams and bytes of a datagram route.
        """
        self.listening.factories = {"web": FakeRouteServer("web"), None: FakeRouteServer(None)}
        self.listening.relays = [FakeRouteServer("dns")]
        samples = self.scrape()
        for route in ("web", ""):
            for name in ("connections_total", "connections_active"):
                self.assertEqual(samples[f"socketproxyd_{name}", (("route", route),)], 0)
            closed = (("ending", "done"), ("route", route))
            self.assertEqual(samples["socketproxyd_connections_closed_total", closed], 0)
            for direction in ("upstream", "downstream"):
                labels = (("direction", direction), ("route", route))
                self.assertEqual(samples["socketproxyd_bytes_total", labels], 0)
        self.assertEqual(samples["socketproxyd_sessions_total", (("route", "dns"),)], 0)
        self.assertEqual(samples["socketproxyd_sessions_active", (("route", "dns"),)], 0)
        for name in ("datagrams_total", "datagram_bytes_total"):
            labels = (("direction", "downstream"), ("route", "dns"))
            self.assertEqual(samples[f"socketproxyd_{name}", labels], 0)
        self.assertNotIn(("socketproxyd_sessions_total", (("route", "web"),)), samples)

    def test_connections(self) -> None:
        """
        Closed connections count by route and ending; bytes include those
        of the connections still open.
        """
        web, other = FakeRouteServer("web"), FakeRouteServer(None)
        done = FakeServed(web, [10, 200])
        reset = FakeServed(web, [1, 2])
        held = FakeServed(other, [5, 7])
        for client in (done, reset, held):
            self.ledger.opened(client)
        done.ending = Ending.DONE
        reset.ending = Ending.CONNECT_TIMEOUT
        self.ledger.closed(done)
        self.ledger.closed(reset)
        held.counts[0] += 100
        samples = self.scrape()
        self.assertEqual(samples["socketproxyd_connections_total", (("route", "web"),)], 2)
        self.assertEqual(samples["socketproxyd_connections_total", (("route", ""),)], 1)
        self.assertEqual(samples["socketproxyd_connections_active", (("route", "web"),)], 0)
        self.assertEqual(samples["socketproxyd_connections_active", (("route", ""),)], 1)
        closed = {
            k[1]: v for k, v in samples.items() if k[0] == "socketproxyd_connections_closed_total"
        }
        self.assertEqual(
            closed,
            {
                (("ending", "done"), ("route", "web")): 1,
                (("ending", "connect_timeout"), ("route", "web")): 1,
                (("ending", "done"), ("route", "")): 0,
            },
        )
        moved = {k[1]: v for k, v in samples.items() if k[0] == "socketproxyd_bytes_total"}
        self.assertEqual(
            moved,
            {
                (("direction", "downstream"), ("route", "web")): 202,
                (("direction", "upstream"), ("route", "web")): 11,
                (("direction", "downstream"), ("route", "")): 7,
                (("direction", "upstream"), ("route", "")): 105,
            },
        )
        self.ledger.closed(held)
        held.counts[0] += 1000
        samples = self.scrape()
        self.assertEqual(
            samples["socketproxyd_bytes_total", (("direction", "upstream"), ("route", ""))], 105
        )

    def test_durations(self) -> None:
        """
        Each closed connection with recorded times adds its accept to
        connect and its accept to close to the route's histograms; one
        that never connected only the latter; retries are the route's.
        A duration on a bucket's bound counts in that bucket, one of no
        time in the first.
        """
        web = self.listening.factories["web"] = FakeRouteServer("web", connectRetries=3)
        self.clock.advance(100)
        quick = FakeServed(web, started=100.0, connected=100.002)
        onBound = FakeServed(web, started=100.0, connected=100.25)
        onFirstBound = FakeServed(web, started=0.0005, connected=0.001)
        failed = FakeServed(web, started=100.0)
        untimed = FakeServed(web)
        for client in (quick, onBound, onFirstBound, failed, untimed):
            self.ledger.opened(client)
        self.clock.advance(5)
        instant = FakeServed(web, started=105.0, connected=105.0)
        self.ledger.opened(instant)
        for client in (quick, onBound, onFirstBound, failed, untimed, instant):
            self.ledger.closed(client)
        samples = self.scrape()
        route = ("route", "web")
        connect = "socketproxyd_connect_duration_seconds"
        lifetime = "socketproxyd_connection_duration_seconds"

        def buckets(name: str) -> dict[str, float]:
            return {
                dict(labels)["le"]: value
                for (sample, labels), value in samples.items()
                if sample == f"{name}_bucket"
            }

        self.assertEqual(samples[f"{connect}_count", (route,)], 4)
        self.assertAlmostEqual(samples[f"{connect}_sum", (route,)], 0.2525)
        connects = buckets(connect)
        self.assertEqual(
            [connects[le] for le in ("0.0005", "0.001", "0.0025", "0.1", "0.25", "0.5", "+Inf")],
            [2, 2, 3, 3, 4, 4, 4],
        )
        self.assertEqual(samples[f"{lifetime}_count", (route,)], 5)
        self.assertAlmostEqual(samples[f"{lifetime}_sum", (route,)], 119.9995)
        lifetimes = buckets(lifetime)
        self.assertEqual(
            [lifetimes[le] for le in ("0.001", "1.0", "10.0", "300.0", "+Inf")],
            [1, 1, 4, 5, 5],
        )
        self.assertEqual(samples["socketproxyd_connect_retries_total", (route,)], 3)

    def test_durationsCountedOnce(self) -> None:
        """
        Each close counts once in each histogram and in the bytes however
        closes and scrapes interleave.
        """
        web = self.listening.factories["web"] = FakeRouteServer("web")
        self.clock.advance(10)
        closes = 1000

        def serve(count: int) -> None:
            for _ in range(count):
                client = FakeServed(web, [3, 5_000_000_000], started=9.5, connected=9.75)
                self.ledger.opened(client)
                self.ledger.closed(client)

        serve(closes)
        self.scrape()
        serve(5)
        samples = self.scrape()
        route = ("route", "web")
        for name, each in (("connect", 0.25), ("connection", 0.5)):
            family = f"socketproxyd_{name}_duration_seconds"
            self.assertEqual(samples[f"{family}_count", (route,)], closes + 5)
            self.assertAlmostEqual(samples[f"{family}_sum", (route,)], (closes + 5) * each)
            self.assertEqual(samples[f"{family}_bucket", (("le", "1.0"), route)], closes + 5)
            self.assertEqual(samples[f"{family}_bucket", (("le", "0.1"), route)], 0)
        moved = {"upstream": 3, "downstream": 5_000_000_000}
        for direction, each in moved.items():
            labels = (("direction", direction), route)
            self.assertEqual(samples["socketproxyd_bytes_total", labels], (closes + 5) * each)

    def test_sessions(self) -> None:
        """
        Datagram sessions count apart from connections, with datagrams and
        their bytes by direction.
        """
        dns = FakeRouteServer("dns")
        first = FakeServed(dns, [30, 300], datagrams=[1, 2])
        second = FakeServed(dns, [5, 0], datagrams=[1, 0])
        self.ledger.opened(first)
        self.ledger.opened(second)
        first.ending = Ending.IDLE_TIMEOUT
        self.ledger.closed(first)
        samples = self.scrape()
        route = ("route", "dns")
        self.assertEqual(samples["socketproxyd_sessions_total", (route,)], 2)
        self.assertEqual(samples["socketproxyd_sessions_active", (route,)], 1)
        self.assertEqual(
            samples["socketproxyd_datagrams_total", (("direction", "upstream"), route)], 2
        )
        self.assertEqual(
            samples["socketproxyd_datagram_bytes_total", (("direction", "downstream"), route)],
            300,
        )
        self.assertNotIn("socketproxyd_connections_total", {k[0] for k in samples})

    def test_dropped(self) -> None:
        """
        Dropped datagrams count by route and why, whether or not any
        session was ever opened.
        """
        dns = FakeRouteServer("dns", drops=Counter(limit=4, upstream_failed=1))
        self.listening.relays.append(dns)
        samples = self.scrape()
        dropped = {
            k[1]: v for k, v in samples.items() if k[0] == "socketproxyd_datagrams_dropped_total"
        }
        self.assertEqual(
            dropped,
            {
                (("reason", "limit"), ("route", "dns")): 4,
                (("reason", "upstream_failed"), ("route", "dns")): 1,
            },
        )

    def test_limit(self) -> None:
        """
        The limit's capacity and how often it was reached or ran out of
        descriptors.
        """
        self.limit.timesFull = 3
        self.limit.exhaustions = 2
        samples = self.scrape()
        self.assertEqual(samples["socketproxyd_connections_max", ()], 100)
        self.assertEqual(samples["socketproxyd_limit_reached_total", ()], 3)
        self.assertEqual(samples["socketproxyd_descriptor_exhaustion_total", ()], 2)
        info = [k for k in samples if k[0] == "socketproxyd_build_info"]
        self.assertEqual(len(info), 1)
        self.assertEqual(sorted(dict(info[0][1])), ["python_version", "twisted_version", "version"])
