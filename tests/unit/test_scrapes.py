"""
Tests for L{socketproxyd.metrics.scrapes}: scrapers within the descriptors
kept for them, then within what the connections leave, and otherwise in
the backlog.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from socketproxyd.fdbudget import RESERVE, FdBudget
from socketproxyd.metrics.scrapes import (
    COLLECTING_FDS,
    KEPT_SCRAPES,
    REQUEST_SECONDS,
    ScrapeAdmission,
)
from socketproxyd.metrics.web import NothingBelow
from tests.support.fakes import FakePort

DONE = Failure(ConnectionDone())


class ScrapeAdmissionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.budget = FdBudget()
        self.budget.count(100, 10)
        self.admission = ScrapeAdmission(
            self.reactor, Site(NothingBelow(), reactor=self.reactor), self.budget
        )
        self.acceptor = FakePort()
        self.admission.acceptors.append(self.acceptor)  # type: ignore[arg-type]

    def scraper(self, transport: StringTransport | None = None) -> ProtocolWrapper:
        """
        A scraper's connection (on C{transport}), made as the reactor makes
        an accepted one.
        """
        protocol = self.admission.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport() if transport is None else transport)
        return protocol

    def retries(self) -> int:
        """
        How many back-offs are pending (the scrapers' own HTTP timeouts
        are not counted).
        """
        due = self.reactor.seconds() + self.admission.backoff
        return sum(call.getTime() == due for call in self.reactor.getDelayedCalls())

    def test_keeps(self) -> None:
        """
        The budget keeps descriptors for L{KEPT_SCRAPES} scrapers and for
        collecting, before any scraper comes.
        """
        self.assertEqual(self.budget.free, 100 - 10 - RESERVE - KEPT_SCRAPES - COLLECTING_FDS)

    def test_keptThenBudget(self) -> None:
        """
        With no descriptor left to the connections, L{KEPT_SCRAPES}
        scrapers still fit; beyond them a scraper takes its descriptor from
        the budget and gives it back when it closes.
        """
        self.budget.free = 0
        self.assertEqual(self.admission.room(), KEPT_SCRAPES)
        scrapers = [self.scraper() for _ in range(KEPT_SCRAPES)]
        self.assertEqual((self.admission.room(), self.admission.scrapers), (0, KEPT_SCRAPES))
        self.assertEqual(self.budget.keptOpen, KEPT_SCRAPES)
        self.budget.free = 3
        self.assertEqual(self.admission.room(), 3)
        scrapers.append(self.scraper())
        self.assertEqual((self.budget.free, self.admission.room()), (2, 2))
        scrapers.pop().connectionLost(DONE)
        self.assertEqual((self.budget.free, self.admission.scrapers), (3, KEPT_SCRAPES))
        scrapers.pop().connectionLost(DONE)
        self.assertEqual((self.budget.free, self.budget.keptOpen), (3, KEPT_SCRAPES - 1))
        self.assertEqual(self.admission.room(), 4)

    def test_backlogUntilOneCloses(self) -> None:
        """
        Out of room, the acceptors stop reading; they read again when a
        scraper closes, and the back-off is called off.
        """
        self.budget.free = 0
        scrapers = [self.scraper() for _ in range(KEPT_SCRAPES)]
        self.admission.fdsExhausted()
        self.admission.fdsExhausted()
        self.assertFalse(self.acceptor.reading)
        self.assertEqual(self.retries(), 1)
        scrapers[0].connectionLost(DONE)
        self.assertTrue(self.acceptor.reading)
        self.assertEqual(self.retries(), 0)

    def test_backlogUntilBackoff(self) -> None:
        """
        Out of descriptors with no scraper open, the acceptors read again
        once the back-off has passed, and stop for good when closed.
        """
        self.admission.fdsExhausted()
        self.reactor.advance(self.admission.backoff - 0.01)
        self.assertFalse(self.acceptor.reading)
        self.reactor.advance(0.01)
        self.assertTrue(self.acceptor.reading)
        self.admission.fdsExhausted()
        self.admission.close()
        self.assertEqual((self.acceptor.reading, self.reactor.getDelayedCalls()), (False, []))
        self.scraper().connectionLost(DONE)
        self.assertFalse(self.acceptor.reading)

    def test_servesTheSite(self) -> None:
        """
        A scraper's connection speaks the wrapped site's protocol.
        """
        transport = StringTransport()
        protocol = self.scraper(transport)
        protocol.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "), transport.value())
        self.assertEqual(self.flushWarnings(), [])

    def test_requestDeadline(self) -> None:
        """
        A request sent a byte at a time is aborted REQUEST_SECONDS after
        its first byte, though every byte restarts the HTTP idle timeout,
        and its place is given back; a whole request is answered and the
        next one has its own deadline.
        """
        transport = StringTransport()
        protocol = self.scraper(transport)
        protocol.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "))
        self.reactor.advance(REQUEST_SECONDS * 2)
        self.assertFalse(transport.disconnecting)
        request = b"GET /nothing HTTP/1.1\r\n"
        for byte in request[:-1]:
            protocol.dataReceived(bytes([byte]))
            self.reactor.advance(REQUEST_SECONDS / len(request))
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(REQUEST_SECONDS / len(request) + 0.001)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(DONE)
        self.assertEqual((self.admission.scrapers, self.reactor.getDelayedCalls()), (0, []))

    def test_deadlineEndsWithTheConnection(self) -> None:
        """
        A scraper that goes away mid-request, or is written to, leaves no
        deadline behind.
        """
        for end in ("lost", "written"):
            protocol = self.scraper()
            protocol.dataReceived(b"G")
            self.assertEqual(len(self.reactor.getDelayedCalls()), 2)
            if end == "lost":
                protocol.connectionLost(DONE)
                self.assertEqual(self.reactor.getDelayedCalls(), [])
            else:
                protocol.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
                protocol.connectionLost(DONE)

    def test_pipelinedThenStalled(self) -> None:
        """
        The beginning of a next request that came with the end of the
        last one, and then nothing: the HTTP idle timeout closes it after
        60 s without a byte.
        """
        transport = StringTransport()
        protocol = self.scraper(transport)
        protocol.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\nGET /not")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 "))
        self.reactor.advance(59)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1.001)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(DONE)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
