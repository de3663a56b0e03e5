"""
Unit tests for L{socketproxyd.service.proxy} on a memory reactor: the exact
connection limit, the idle exit, and stopping with or without a drain.
"""

from __future__ import annotations

import io
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd import logs
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.events import Ending
from socketproxyd.service.closelog import CloseLog
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.opening import StreamListener
from socketproxyd.service.proxy import ProxyService
from socketproxyd.stream.earlyrelay import Handover
from tests.support.fakes import FakePort, FakeRouteServer, FakeServed


class FakeConnection:
    """
    Stands in for a L{socketproxyd.stream.connection.Connection}: records how it
    was ended.
    """

    datagrams = None
    server = None

    def __init__(self, service: ProxyService) -> None:
        self.ledger = service.ledger
        self.ended: Ending | None = None
        self.reset: bool | None = None

    def shutdown(self) -> None:
        self.ended = Ending.SHUTDOWN
        self.reset = True
        self.ledger.closed(self)


class ServiceTestCase(SynchronousTestCase):
    def service(self, **kwargs: object) -> tuple[ProxyService, list[FakePort]]:
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        service = ProxyService(self.reactor, parseTarget("127.0.0.1:1"), ProxySettings(), **kwargs)
        ports = [FakePort(), FakePort()]
        listening = service.listeners.listening
        for i, port in enumerate(ports):
            listening.add(StreamListener(port, f"test {i}", listening.factoryFor(None, "test")))
        return service, ports


class LimitTests(ServiceTestCase):
    """
    At the limit the listeners stop reading; a freed slot resumes them.
    """

    def test_limit(self) -> None:
        service, ports = self.service(connectionsMax=2)
        service.startService()
        first, second = FakeConnection(service), FakeConnection(service)
        service.ledger.opened(first)
        self.assertEqual([p.reading for p in ports], [True, True])
        service.ledger.opened(second)
        self.assertEqual([p.reading for p in ports], [False, False])
        service.ledger.closed(first)
        self.assertEqual([p.reading for p in ports], [True, True])

    def test_roomFollowsTheSoftLimit(self) -> None:
        """
        The room for new clients is the free slots, as far as the
        descriptors under the soft limit in force now hold them.
        """
        service, ports = self.service(connectionsMax=100)
        limit = [100]
        service.limit.budget.free, service.limit.budget.limit = 40, 100
        service.limit.budget.readLimit = lambda: limit[0]
        service.startService()
        self.assertEqual(service.ledger.room(), 20)
        service.ledger.opened(FakeConnection(service))
        self.assertEqual(service.ledger.room(), 19)
        limit[0] = 80
        self.assertEqual(service.ledger.room(), 9)
        limit[0] = 60
        self.assertEqual(service.ledger.room(), 0)

    def test_exhaustionPausesUntilAClose(self) -> None:
        """
        Running out of descriptors stops every listener until a connection
        closes, and is logged once for the episode.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service, ports = self.service()
        service.startService()
        connection = FakeConnection(service)
        service.ledger.opened(connection)
        for _ in range(3):
            service.ledger.fdsExhausted()
        self.assertEqual([p.reading for p in ports], [False, False])
        service.ledger.closed(connection)
        self.assertEqual([p.reading for p in ports], [True, True])
        formats = [e.get("log_format", "") for e in events]
        self.assertEqual(len([f for f in formats if f.startswith("Out of file")]), 1)
        self.assertEqual(len([f for f in formats if f.startswith("File descriptors")]), 1)

    def test_exhaustionWithoutConnectionsBacksOff(self) -> None:
        """
        With no connection open to free descriptors, accepting is tried
        again after a back-off.
        """
        service, ports = self.service()
        service.startService()
        service.ledger.fdsExhausted()
        self.assertEqual([p.reading for p in ports], [False, False])
        self.reactor.advance(service.limit.exhaustionBackoff)
        self.assertEqual([p.reading for p in ports], [True, True])

    def test_noListener(self) -> None:
        """
        Without a listener the proxy does not start: it exits 1 after one
        line on its stderr.
        """
        service = ProxyService(MemoryReactorClock(), parseTarget("127.0.0.1:1"), ProxySettings())
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        with self.assertRaises(SystemExit) as raised:
            service.privilegedStartService()
        self.assertEqual(raised.exception.code, 1)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("no listening socket", stderr.getvalue())

    def test_earlyRelayFailureSaid(self) -> None:
        """
        An early relay that failed is said in one error line, naming the
        error and the connections reset for it; its traceback at debug.
        """
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        logs.setLevel("debug")
        self.addCleanup(logs.setLevel, "info")
        service = ProxyService(MemoryReactorClock(), parseTarget("127.0.0.1:1"), ProxySettings())
        handover = Handover([], 0.0)
        handover.reset = 2
        try:
            raise RuntimeError("poll broke")
        except RuntimeError as e:
            handover.error = e
        service.takeOver(handover)
        [debug] = [
            formatEvent(e)
            for e in events
            if e.get("log_level") == LogLevel.debug and "error:" in formatEvent(e)
        ]
        self.assertIn("Traceback (most recent call last)", debug)
        self.assertIn("test_earlyRelayFailureSaid", debug)
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(
            errors,
            [
                "The early relay failed (RuntimeError: poll broke); the 2 connection(s) it was "
                "serving are reset"
            ],
        )


class IdleExitTests(ServiceTestCase):
    """
    The idle timer runs from start-up and from the last close.
    """

    def test_fromStartup(self) -> None:
        service, ports = self.service(exitIdleTime=1.0)
        service.startService()
        self.reactor.advance(0.999)
        self.assertFalse(self.reactor.hasStopped)
        self.reactor.advance(0.001)
        self.assertTrue(self.reactor.hasStopped)

    def test_notWhileConnected(self) -> None:
        service, ports = self.service(exitIdleTime=1.0)
        service.startService()
        connection = FakeConnection(service)
        self.reactor.advance(0.5)
        service.ledger.opened(connection)
        self.reactor.advance(10)
        self.assertFalse(self.reactor.hasStopped)
        service.ledger.closed(connection)
        self.reactor.advance(0.999)
        self.assertFalse(self.reactor.hasStopped)
        self.reactor.advance(0.001)
        self.assertTrue(self.reactor.hasStopped)

    def test_infinityNeverExits(self) -> None:
        service, ports = self.service()
        service.startService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class StopTests(ServiceTestCase):
    """
    Stopping closes the listeners at once; open connections get the drain
    timeout, then are closed.
    """

    def test_immediate(self) -> None:
        service, ports = self.service()
        service.startService()
        connection = FakeConnection(service)
        service.ledger.opened(connection)
        stopped = service.stopService()
        self.assertEqual([p.stopped for p in ports], [True, True])
        self.assertEqual((connection.ended, connection.reset), (Ending.SHUTDOWN, True))
        self.successResultOf(stopped)

    def test_drain(self) -> None:
        service, ports = self.service(drainTimeout=5.0)
        service.startService()
        finishing, lingering = FakeConnection(service), FakeConnection(service)
        service.ledger.opened(finishing)
        service.ledger.opened(lingering)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.reactor.advance(2)
        service.ledger.closed(finishing)
        self.assertNoResult(stopped)
        self.assertIsNone(lingering.ended)
        self.reactor.advance(3)
        self.assertEqual((lingering.ended, lingering.reset), (Ending.SHUTDOWN, True))
        self.assertIsNone(finishing.ended)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_drainEndsEarly(self) -> None:
        service, ports = self.service(drainTimeout=5.0)
        service.startService()
        connection = FakeConnection(service)
        service.ledger.opened(connection)
        stopped = service.stopService()
        service.ledger.closed(connection)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class LimitLogTests(ServiceTestCase):
    """
    Hitting the limit is logged once a minute at most, not per client.
    """

    def test_rateLimited(self) -> None:
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service, ports = self.service(connectionsMax=1)
        service.startService()
        for _ in range(5):
            connection = FakeConnection(service)
            service.ledger.opened(connection)
            service.ledger.closed(connection)
        self.reactor.advance(60)
        service.ledger.opened(FakeConnection(service))
        reached = [e for e in events if "limit" in e.get("log_format", "")]
        self.assertEqual([e["hits"] for e in reached], [1, 5])
        self.assertEqual(
            [formatEvent(e) for e in reached],
            [
                "Connection limit 1 reached; new clients wait in the backlog",
                "Connection limit 1 reached 5 times since the last report; "
                "new clients wait in the backlog",
            ],
        )


class WaitingForDescriptorsTests(ServiceTestCase):
    """
    A connection that could not connect for want of descriptors is tried
    again, even when it holds the last free slot.
    """

    def test_retriedAtTheLimit(self) -> None:
        service, ports = self.service(connectionsMax=1)
        service.startService()
        retried = []
        connection = FakeConnection(service)
        ledger = service.ledger
        ledger.opened(connection)
        ledger.fdsExhausted()
        ledger.waitForDescriptors(lambda: retried.append(True))
        self.reactor.advance(service.limit.exhaustionBackoff)
        self.assertEqual(retried, [True])


class CloseLogTests(SynchronousTestCase):
    """
    The close line is one consumer of the ledger, there only when the
    settings log closes.
    """

    def consumers(self, settings: ProxySettings) -> list[type]:
        service = ProxyService(MemoryReactorClock(), parseTarget("127.0.0.1:1"), settings)
        return [type(consumer) for consumer in service.ledger.consumers]

    def test_onlyWhenLogged(self) -> None:
        self.assertIn(CloseLog, self.consumers(ProxySettings(logsCloses=True)))
        self.assertNotIn(CloseLog, self.consumers(ProxySettings()))


class LedgerTests(SynchronousTestCase):
    """
    The ledger tells its consumers of events in the order they began to
    follow it, the limit first.
    """

    def test_followOrderAndOpens(self) -> None:
        """
        A consumer following with C{opens=False} hears closes only; every
        event reaches the consumers in order, after the limit's count.
        """
        heard: list[tuple[str, str]] = []

        class Recorder:
            def __init__(self, name: str) -> None:
                self.name = name

            def opened(self, served: object) -> None:
                heard.append((self.name, "opened"))

            def closed(self, served: object) -> None:
                heard.append((self.name, "closed"))

        ledger = Ledger(ConnectionLimit(MemoryReactorClock(), 10))
        first, second = Recorder("first"), Recorder("second")
        ledger.follow(first)
        ledger.follow(second, opens=False)
        served = FakeServed(FakeRouteServer("web"))
        ledger.opened(served)
        self.assertEqual(ledger.limit.count, 1)
        ledger.closed(served)
        ledger.closed(served)
        self.assertEqual(heard, [("first", "opened"), ("first", "closed"), ("second", "closed")])
        self.assertEqual(ledger.consumers, (ledger.limit, first, second))
        self.assertEqual(ledger.limit.count, 0)
