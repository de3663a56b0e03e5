"""
Unit tests for L{socketproxyd.pausedaccept}: real sockets, a fake reactor
that records registrations.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp, unix
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd import splice
from socketproxyd.pausedaccept import PausedTCPServer, PausedUNIXServer, acceptPaused

from .fakes import FakeFDReactor


class PausedServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeFDReactor()

    def build(self, cls: type, family: int) -> object:
        outside, inside = socket.socketpair(family)
        self.addCleanup(outside.close)
        self.addCleanup(inside.close)
        return cls(inside, Protocol(), ("192.0.2.1", 4000), None, 0, self.reactor)

    def test_startsOutOfTheReactor(self) -> None:
        """
        A paused transport is not registered for reading when built, and is
        once resumed; pausing it again unregisters it.
        """
        for cls in (PausedTCPServer, PausedUNIXServer):
            transport = self.build(cls, socket.AF_UNIX)
            self.assertEqual(self.reactor.readers, set())
            self.assertTrue(transport.connected)
            transport.resumeProducing()
            self.assertEqual(self.reactor.readers, {transport})
            transport.pauseProducing()
            self.assertEqual(self.reactor.readers, set())

    def test_twistedsRegisters(self) -> None:
        """
        The transport it replaces registers as it is built: what this saves.
        """
        transport = self.build(tcp.Server, socket.AF_UNIX)
        self.assertEqual(self.reactor.readers, {transport})

    def test_spliceable(self) -> None:
        if not splice.available():
            raise SkipTest("splice(2) is not available")
        self.assertTrue(splice.spliceable(self.build(PausedTCPServer, socket.AF_UNIX)))


class AcceptPausedTests(SynchronousTestCase):
    def test_plainPorts(self) -> None:
        """
        TCP and UNIX ports serving the factory itself build paused
        transports.
        """
        factory = Factory.forProtocol(Protocol)
        reactor = FakeFDReactor()
        tcpPort = tcp.Port(0, factory, interface="127.0.0.1", reactor=reactor)
        unixPort = unix.Port(self.mktemp(), factory, reactor=reactor)
        for port, paused in [(tcpPort, PausedTCPServer), (unixPort, PausedUNIXServer)]:
            acceptPaused(port, factory)
            self.assertIs(port.transport, paused)

    def test_otherPortsUnchanged(self) -> None:
        """
        A port serving another factory (a TLS wrapper) or building another
        kind of transport keeps its own.
        """
        factory = Factory.forProtocol(Protocol)
        wrapped = tcp.Port(0, Factory.forProtocol(Protocol), reactor=FakeFDReactor())
        acceptPaused(wrapped, factory)
        self.assertIs(wrapped.transport, tcp.Server)

        class OtherServer(tcp.Server):
            pass

        other = tcp.Port(0, factory, reactor=FakeFDReactor())
        other.transport = OtherServer
        acceptPaused(other, factory)
        self.assertIs(other.transport, OtherServer)
