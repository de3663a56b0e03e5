"""
Unit tests for L{socketproxyd.stream.splice.pump} on UNIX socket pairs: attaching,
bytes each way, end of stream and half-close, backpressure. Real socket
pairs, a fake reactor that records registrations, the reactor's calls made by
hand, and a recording stand-in for the pump's connection (L{tests.support.fakes}).
"""

from __future__ import annotations

import socket

from twisted.internet import error

from socketproxyd.events import DOWNSTREAM, UPSTREAM
from tests.support.fakes import TransportProtocol
from tests.support.sockets import recvAvailable
from tests.support.splicing import SplicePumpTestCase


class SplicePumpTests(SplicePumpTestCase):
    """
    A pump between two UNIX socket pairs: C{client} and C{target} are the far
    ends, the pump holds the near ones.
    """

    def test_attachRegistersBothEnds(self) -> None:
        """
        L{SplicePump.attach} with a connected socket puts an end for each
        socket in the reactor, reading, and reports nothing.
        """
        self.assertIs(self.clientEnd.socket, self.clientInside)
        self.assertIs(self.targetEnd.socket, self.targetInside)
        self.assertEqual(self.reactor.readers, {self.clientEnd, self.targetEnd})
        self.assertEqual(self.reactor.writers, set())
        self.assertEqual(
            (self.connection.moves, self.connection.readEnds, self.connection.closings),
            ([], [], 0),
        )

    def test_attachBorrowsTransport(self) -> None:
        """
        Given a protocol on a Twisted transport, L{SplicePump.attach} stops
        the transport and splices its socket; L{SplicePump.close} closes
        the client's socket and hands the target's back to the transport
        to close.
        """
        client, clientInside = self.pair()
        target, targetInside = self.pair()
        protocol = TransportProtocol(targetInside)
        pump, connection = self.attached(clientInside, protocol)
        transport = protocol.transport
        self.assertEqual((transport.reading, transport.writing), (False, False))
        self.assertIs(pump.downstream.socket, targetInside)
        self.assertEqual(self.reactor.readers - {self.clientEnd, self.targetEnd}, set(pump.ends))
        client.sendall(b"hello")
        pump.upstream.doRead()
        self.assertEqual(target.recv(100), b"hello")
        pump.close()
        self.assertEqual(transport.calls, ["loseConnection"])
        self.assertEqual(client.recv(100), b"")
        self.assertNotEqual(targetInside.fileno(), -1)
        self.assertEqual(connection.closings, 1)
        self.assertTrue(self.reactor.readers.isdisjoint(pump.ends))

    def test_attachForwardsWaitingBytes(self) -> None:
        """
        What the client sent before the target was attached goes to the
        target from L{SplicePump.attach} itself, without waiting for a read
        event; with nothing waiting, attach sends nothing.
        """
        self.assertEqual(self.connection.moves, [])
        self.assertRaises(BlockingIOError, self.target.recv, 100)
        client, clientInside = self.pair()
        target, targetInside = self.pair()
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        pump, connection = self.attached(clientInside, targetInside)
        self.assertEqual(target.recv(100), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(connection.moves, [(UPSTREAM, 18)])
        self.assertIn(pump.upstream, self.reactor.readers)
        pump.close()

    def test_preambleGoesFirst(self) -> None:
        """
        The preamble given to L{SplicePump.attach} (a PROXY header) reaches
        the target before the client's first bytes, which were already
        waiting; only the client's bytes are counted.
        """
        client, clientInside = self.pair()
        target, targetInside = self.pair()
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        header = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 80\r\n"
        pump, connection = self.attached(clientInside, targetInside, header)
        self.assertEqual(recvAvailable(target), header + b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(connection.moves, [(UPSTREAM, 18)])
        self.assertEqual(self.reactor.writers, set())
        self.assertIn(pump.upstream, self.reactor.readers)
        pump.close()

    def test_bytesBothWays(self) -> None:
        """
        Bytes read from either socket are written to the other, and each
        move is reported with its direction and count.
        """
        self.client.sendall(b"request")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"request")
        self.target.sendall(b"reply!")
        self.targetEnd.doRead()
        self.assertEqual(self.client.recv(100), b"reply!")
        self.assertEqual(self.connection.moves, [(UPSTREAM, 7), (DOWNSTREAM, 6)])
        self.assertEqual(self.connection.closings, 0)

    def test_endOfStreamWaitsForConnection(self) -> None:
        """
        An end of stream is reported as C{readEnded} and the source is no
        longer read, but the destination is only shut down when the
        connection calls L{SplicePump.shutdownWrite}.
        """
        self.connection.forwardEnds = False
        self.client.sendall(b"req")
        self.client.shutdown(socket.SHUT_WR)
        self.clientEnd.doRead()
        self.clientEnd.doRead()
        self.assertEqual(self.connection.readEnds, [UPSTREAM])
        self.assertNotIn(self.clientEnd, self.reactor.readers)
        self.assertEqual(self.target.recv(100), b"req")
        self.assertRaises(BlockingIOError, self.target.recv, 100)
        self.assertEqual(self.connection.writeShuts, [])
        self.pump.shutdownWrite(UPSTREAM)
        self.assertEqual(self.target.recv(100), b"")
        self.assertEqual(self.connection.writeShuts, [UPSTREAM])

    def test_halfCloseThenDone(self) -> None:
        """
        EOF from the client shuts down writing to the target; the reply
        still flows; EOF from the target, found in the same wake-up as the
        reply it follows, finishes the connection, whose close of the
        sockets ends the reply direction.
        """
        self.client.sendall(b"req")
        self.client.shutdown(socket.SHUT_WR)
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"req")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"")
        self.assertNotIn(self.clientEnd, self.reactor.readers)
        self.assertEqual(
            (self.connection.readEnds, self.connection.writeShuts), ([UPSTREAM], [UPSTREAM])
        )
        self.target.sendall(b"REPLY")
        self.target.shutdown(socket.SHUT_WR)
        self.targetEnd.doRead()
        self.assertEqual(self.client.recv(100), b"REPLY")
        self.assertEqual(self.connection.readEnds, [UPSTREAM, DOWNSTREAM])
        self.assertEqual(self.connection.writeShuts, [UPSTREAM, DOWNSTREAM])
        self.assertEqual(self.connection.moves, [(UPSTREAM, 3), (DOWNSTREAM, 5)])
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 1))
        self.assertEqual(self.reactor.readers | self.reactor.writers, set())
        self.assertEqual(self.client.recv(100), b"")

    def test_shutdownWriteWaitsForInFlight(self) -> None:
        """
        L{SplicePump.shutdownWrite} for a direction whose bytes are still
        on their way to the destination shuts its write side down, and
        reports C{writeShut}, only once every byte is out.
        """
        sent = self.fillUntilBlocked()
        self.assertIn(self.targetEnd, self.reactor.writers)
        self.pump.shutdownWrite(UPSTREAM)
        self.assertEqual(self.connection.writeShuts, [])
        received = b""
        while self.targetEnd in self.reactor.writers:
            received += recvAvailable(self.target)
            self.targetEnd.doWrite()
        self.assertEqual(self.connection.writeShuts, [UPSTREAM])
        received += recvAvailable(self.target)
        self.assertEqual(received, sent[: len(received)])
        self.assertEqual(self.target.recv(100), b"")
        self.assertEqual(self.connection.counts(), (len(received), 0))
        self.assertNotIn(self.clientEnd, self.reactor.readers)
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 0))

    def test_hangUpEndsSource(self) -> None:
        """
        The reactor's hang-up report for a socket it was reading, with
        nothing on its way into that socket, ends its source like an end
        of stream: the target gets its end of stream.
        """
        self.reactorLoses(self.clientEnd, error.ConnectionDone())
        self.assertEqual(self.connection.readEnds, [UPSTREAM])
        self.assertEqual(self.connection.writeShuts, [UPSTREAM])
        self.assertEqual(self.target.recv(100), b"")
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 0))

    def test_lostWhileWritingResets(self) -> None:
        """
        The reactor's report that a socket was lost while bytes were on
        their way into it is a failure: the connection aborts the pump.
        """
        self.fillUntilBlocked()
        self.reactorLoses(self.targetEnd, error.ConnectionLost())
        self.assertEqual((self.connection.failures, self.connection.closings), (1, 1))
        self.assertEqual(self.connection.readEnds, [])
        self.assertFalse(self.pump.running)
        self.assertEqual(self.reactor.readers | self.reactor.writers, set())

    def test_backpressure(self) -> None:
        """
        While the destination cannot take the pipe's bytes, the source is
        not read; once it drains, reading resumes and every byte arrives,
        each counted once.
        """
        sent = self.fillUntilBlocked()
        received = b""
        self.assertIn(self.targetEnd, self.reactor.writers)
        while self.targetEnd in self.reactor.writers or self.clientEnd in self.reactor.readers:
            try:
                received += self.target.recv(1 << 20)
            except BlockingIOError:
                pass
            if self.targetEnd in self.reactor.writers:
                self.targetEnd.doWrite()
            elif len(received) < len(sent):
                self.clientEnd.doRead()
            else:
                break
        self.assertEqual(received, sent)
        self.assertEqual(self.connection.counts(), (len(sent), 0))
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 0))
