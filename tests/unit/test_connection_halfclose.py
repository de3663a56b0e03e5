"""
Unit tests for half-close on the transport pump, step by step: an end of stream
on one transport becomes a write shutdown on the other. On string transports.
"""

from __future__ import annotations

from socketproxyd.config.settings import ProxySettings
from socketproxyd.events import Ending
from socketproxyd.stream.pump import Flow
from tests.support.fakes import ConnectionTestCase, TransportHarness


class TransportHalfCloseTests(ConnectionTestCase):
    """
    End of stream on one transport becomes a write shutdown on the other,
    step by step.
    """

    def connected(self) -> TransportHarness:
        harness = TransportHarness(ProxySettings(), self.tracker)
        harness.completeConnect()
        return harness

    def test_clientEofShutsDownTargetWriting(self) -> None:
        """
        The client's end of stream unregisters the client as the target's
        producer and shuts down writing to the target; the direction is
        shut once the transport says so, and the reply still flows.
        """
        harness = self.connected()
        harness.server.readConnectionLost()
        self.assertEqual(harness.clientTransport.writeCloses, 1)
        self.assertIsNone(harness.clientTransport.producer)
        self.assertIs(harness.serverTransport.producer, harness.client)
        self.assertEqual(harness.connection.flows, [Flow.ENDED, Flow.OPEN])
        harness.settle()
        self.assertEqual(harness.connection.flows, [Flow.SHUT, Flow.OPEN])
        self.assertFalse(harness.serverTransport.disconnecting)
        harness.client.dataReceived(b"reply")
        self.assertEqual(harness.serverTransport.value(), b"reply")

    def test_bothDirectionsDoneCloses(self) -> None:
        """
        Once both directions are shut both transports are closed (at once,
        as Twisted closes a transport whose writing is shut down), and the
        connection is reported closed when both are gone.
        """
        harness = self.connected()
        harness.server.readConnectionLost()
        harness.settle()
        harness.client.readConnectionLost()
        self.assertEqual(harness.serverTransport.writeCloses, 1)
        self.assertFalse(harness.serverTransport.disconnecting)
        self.assertEqual(self.tracker.closes, [])
        harness.deliverOne()
        self.assertTrue(harness.serverTransport.lost)
        self.assertTrue(harness.clientTransport.lost)
        self.assertFalse(harness.serverTransport.aborted or harness.clientTransport.aborted)
        self.assertEqual(harness.deliveries, [])
        self.assertEqual(self.tracker.closes, [harness.connection])
        self.assertIs(harness.connection.ending, Ending.DONE)

    def test_secondEofIgnored(self) -> None:
        """
        Twisted may deliver C{readConnectionLost} twice; the second does
        nothing.
        """
        harness = self.connected()
        harness.server.readConnectionLost()
        harness.server.readConnectionLost()
        self.assertEqual(harness.clientTransport.writeCloses, 1)
        self.assertEqual(harness.connection.flows, [Flow.ENDED, Flow.OPEN])
