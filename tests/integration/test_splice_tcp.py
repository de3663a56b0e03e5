"""
L{socketproxyd.stream.splice.pump} between TCP sockets on the loopback interface
(bound and connected for real): keepalive, resets, clean closes and aborts,
which UNIX socket pairs cannot show.
"""

from __future__ import annotations

import socket

from tests.support.fakes import TransportProtocol
from tests.support.splicing import SplicePumpTestCase


class SpliceTcpTests(SplicePumpTestCase):
    """
    A pump whose client and target sockets are loopback TCP pairs.
    """

    def test_abortAbortsBorrowedTransport(self) -> None:
        """
        L{SplicePump.abort} of a pump on a borrowed socket resets the
        client and has the transport abort the target's socket.
        """
        client, clientInside = self.tcpPair()
        _, targetInside = self.pair()
        protocol = TransportProtocol(targetInside)
        pump, connection = self.attached(clientInside, protocol)
        pump.abort()
        self.assertEqual(protocol.transport.calls, ["abortConnection"])
        self.assertRaises(ConnectionResetError, client.recv, 100)
        self.assertNotEqual(targetInside.fileno(), -1)
        self.assertEqual(connection.closings, 1)

    def test_keepalive(self) -> None:
        """
        A pump made with C{keepalive=True} turns on TCP keepalive on both
        sockets when the target is attached; without it, neither is
        touched.
        """
        client, clientInside = self.tcpPair()
        target, targetInside = self.tcpPair()
        plainClient, plainClientInside = self.tcpPair()
        plainTarget, plainTargetInside = self.tcpPair()
        sockets = (clientInside, targetInside, plainClientInside, plainTargetInside)
        for sock in sockets:
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
        pump, _ = self.attached(clientInside, targetInside, keepalive=True)
        plain, _ = self.attached(plainClientInside, plainTargetInside)
        self.assertEqual(
            [sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) for sock in sockets],
            [1, 1, 0, 0],
        )
        pump.close()
        plain.close()

    def test_resetReported(self) -> None:
        """
        A write to a target that reset the connection is reported as a
        failure; the connection's abort stops the pump and resets the
        client.
        """
        client, target, pump, connection = self.tcpPump()
        target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        target.close()
        client.sendall(b"x")
        pump.upstream.doRead()
        self.assertEqual((connection.failures, connection.closings), (1, 1))
        self.assertFalse(pump.running)
        self.assertTrue(self.reactor.readers.isdisjoint(pump.ends))
        self.assertRaises(ConnectionResetError, client.recv, 100)

    def test_closeEndsCleanly(self) -> None:
        """
        L{SplicePump.close} takes both sockets out of the reactor and
        closes them: each peer reads a normal end of stream, the connection
        hears of it once.
        """
        client, target, pump, connection = self.tcpPump()
        pump.close()
        self.assertTrue(self.reactor.readers.isdisjoint(pump.ends))
        self.assertEqual(client.recv(10), b"")
        self.assertEqual(target.recv(10), b"")
        self.assertEqual(connection.closings, 1)

    def test_abortResetsBoth(self) -> None:
        """
        L{SplicePump.abort} closes both sockets with a reset: each peer
        sees C{ECONNRESET}; the connection hears of it once.
        """
        client, target, pump, connection = self.tcpPump()
        pump.abort()
        self.assertTrue(self.reactor.readers.isdisjoint(pump.ends))
        self.assertRaises(ConnectionResetError, client.recv, 10)
        self.assertRaises(ConnectionResetError, target.recv, 10)
        self.assertEqual((connection.failures, connection.closings), (0, 1))
