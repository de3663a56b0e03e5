"""
Unit tests for L{socketproxyd.stream.splice.pump}: real socket pairs and pipes, a fake
reactor that records registrations, the reactor's calls made by hand, and a
recording stand-in for the pump's L{socketproxyd.stream.connection.Connection}.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd.config.settings import PIPE_SIZE, pipeMaxSize
from socketproxyd.events import DOWNSTREAM, UPSTREAM
from socketproxyd.fdbudget import FdBudget
from socketproxyd.stream.splice import pipes
from socketproxyd.stream.splice import pump as splice
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.stream.splice.pump import SplicePump

from .fakes import FakeFDReactor


class RecordingConnection:
    """
    Stands in for the L{socketproxyd.stream.connection.Connection} of a pump:
    records every report, and answers as the real one does: an end of
    stream is forwarded at once (unless C{forwardEnds} is false), both
    directions shut close the pump, a failure aborts it.

    @ivar moves: every C{moved} report, as C{(direction, count)}.
    @ivar readEnds: the directions reported ended, in order.
    @ivar writeShuts: the directions reported shut, in order.
    @ivar failures: how many times the pump reported a failure.
    @ivar closings: how many times the pump reported it closed.
    """

    def __init__(self, pump: SplicePump, forwardEnds: bool = True) -> None:
        self.pump = pump
        pump.connection = self
        self.forwardEnds = forwardEnds
        self.moves: list[tuple[int, int]] = []
        self.readEnds: list[int] = []
        self.writeShuts: list[int] = []
        self.failures = 0
        self.closings = 0
        self.ending = False

    def counts(self) -> tuple[int, int]:
        """
        Bytes moved upstream and downstream.
        """
        return (
            sum(count for direction, count in self.moves if direction == UPSTREAM),
            sum(count for direction, count in self.moves if direction == DOWNSTREAM),
        )

    def moved(self, direction: int, count: int) -> None:
        self.moves.append((direction, count))

    def readEnded(self, direction: int) -> None:
        self.readEnds.append(direction)
        if self.forwardEnds and not self.ending:
            self.pump.shutdownWrite(direction)

    def writeShut(self, direction: int) -> None:
        self.writeShuts.append(direction)
        if set(self.writeShuts) == {UPSTREAM, DOWNSTREAM}:
            self.end(reset=False)

    def failed(self) -> None:
        self.failures += 1
        self.end(reset=True)

    def end(self, reset: bool) -> None:
        if self.ending:
            return
        self.ending = True
        if reset:
            self.pump.abort()
        else:
            self.pump.close()

    def closed(self) -> None:
        self.closings += 1


class PausedTransport:
    """
    The parts of a paused Twisted transport a pump borrows the socket of.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.reading = self.writing = True
        self.calls: list[str] = []

    def getHandle(self) -> socket.socket:
        return self.socket

    def stopReading(self) -> None:
        self.reading = False

    def stopWriting(self) -> None:
        self.writing = False

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")


class TransportProtocol:
    """
    A protocol on a Twisted transport, as a fallback endpoint gives it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.transport = PausedTransport(sock)


class SplicePumpTests(SynchronousTestCase):
    """
    A pump between two socket pairs: C{client} and C{target} are the far
    ends, the pump holds the near ones.
    """

    def setUp(self) -> None:
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.reactor = FakeFDReactor()
        self.clock = Clock()
        self.outOfFds = 0
        self.sweeper = PipeSweeper(self.clock, outOfFds=self.countOutOfFds)
        self.client, self.clientInside = self.pair()
        self.target, self.targetInside = self.pair()
        self.pump, self.connection = self.attached(self.clientInside, self.targetInside)
        self.clientEnd, self.targetEnd = self.pump.ends

    def countOutOfFds(self) -> None:
        self.outOfFds += 1

    def pair(self) -> tuple[socket.socket, socket.socket]:
        outside, inside = socket.socketpair()
        for sock in (outside, inside):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return outside, inside

    def tcpPair(self) -> tuple[socket.socket, socket.socket]:
        """
        A connected loopback TCP pair, outside end first.
        """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        outside = socket.create_connection(server.getsockname())
        inside, _ = server.accept()
        server.close()
        for sock in (outside, inside):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return outside, inside

    def attached(
        self,
        client: socket.socket,
        target: object,
        preamble: bytes = b"",
        keepalive: bool = False,
    ) -> tuple[SplicePump, RecordingConnection]:
        pump = SplicePump(self.reactor, self.sweeper, client, keepalive)
        connection = RecordingConnection(pump)
        pump.attach(target, preamble)
        return pump, connection

    def tcpPump(self) -> tuple[socket.socket, socket.socket, SplicePump, RecordingConnection]:
        """
        A pump between two TCP pairs: the client, the target, the pump and
        its connection.
        """
        client, clientInside = self.tcpPair()
        target, targetInside = self.tcpPair()
        pump, connection = self.attached(clientInside, targetInside)
        return client, target, pump, connection

    def fillUntilBlocked(self) -> bytes:
        """
        Send from the client and have the pump read, until the target's
        socket is full and the pump stops reading the client: what the
        client sent.
        """
        self.target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        chunk = os.urandom(1 << 16)
        sent = b""
        while self.clientEnd in self.reactor.readers:
            try:
                sent += chunk[: self.client.send(chunk)]
            except BlockingIOError:
                pass
            self.clientEnd.doRead()
        return sent

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
        self.assertEqual(recvAll(target), header + b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(connection.moves, [(UPSTREAM, 18)])
        self.assertEqual(self.reactor.writers, set())
        self.assertIn(pump.upstream, self.reactor.readers)
        pump.close()

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
            received += recvAll(self.target)
            self.targetEnd.doWrite()
        self.assertEqual(self.connection.writeShuts, [UPSTREAM])
        received += recvAll(self.target)
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

    def reactorLoses(self, end: object, reason: Exception) -> None:
        """
        What Twisted's reactor does on a hang-up or error: take the socket
        out of its readers and writers, then report it lost.
        """
        self.reactor.removeReader(end)
        self.reactor.removeWriter(end)
        end.connectionLost(Failure(reason))

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

    def test_smallMessagesNeedNoPipe(self) -> None:
        """
        Reads shorter than the copy buffer are copied; no pipe is opened.
        """
        self.client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"GET / HTTP/1.1\r\n\r\n")
        self.assertIsNone(self.pump.upstream.pipe)
        self.assertEqual(self.sweeper.holders, set())

    def test_idlePipesSwept(self) -> None:
        """
        A full buffer's worth opens the pipes; an interval without any
        traffic closes them.
        """
        self.client.sendall(b"x" * splice.COPY_SIZE)
        self.clientEnd.doRead()
        self.assertEqual(len(recvAll(self.target)), splice.COPY_SIZE)
        self.assertIsNotNone(self.pump.upstream.pipe)
        self.assertIsNotNone(self.pump.downstream.pipe)
        self.client.sendall(b"y")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(10), b"y")
        self.clock.advance(PipeSweeper.interval)
        self.assertIsNotNone(self.pump.upstream.pipe)
        self.clock.advance(PipeSweeper.interval)
        self.assertIsNone(self.pump.upstream.pipe)
        self.assertIsNone(self.pump.downstream.pipe)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sweeper.holders, set())
        self.assertEqual(self.connection.counts(), (splice.COPY_SIZE + 1, 0))

    def test_pipeSize(self) -> None:
        """
        Pipes are the size the sweeper asks for (C{--pipe-size}), a size
        below the copy buffer's included, and bulk goes through them whole.
        """
        for size in (4096, 65536, 1 << 20):
            if size > pipeMaxSize():
                continue
            self.sweeper.pipeSize = size
            data = bytes(range(256)) * (3 * splice.COPY_SIZE // 256)
            self.client.sendall(data[: splice.COPY_SIZE])
            self.clientEnd.doRead()
            self.assertEqual(self.pump.upstream.pipe.size, size)
            self.assertEqual(self.pump.downstream.pipe.size, size)
            self.client.sendall(data[splice.COPY_SIZE :])
            received = recvAll(self.target)
            while len(received) < len(data):
                self.clientEnd.doRead()
                received += recvAll(self.target)
            self.assertEqual(received, data)
            self.pump.releasePipes()

    def test_budgetFullKeepsCopying(self) -> None:
        """
        With no room for a pipe pair in the fd budget, bulk data goes on
        through the copy buffer.
        """
        self.sweeper.budget = FdBudget(0)
        for _ in range(3):
            self.client.sendall(b"x" * splice.COPY_SIZE)
            self.clientEnd.doRead()
            self.assertEqual(len(recvAll(self.target)), splice.COPY_SIZE)
        self.assertIsNone(self.pump.upstream.pipe)
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 0))
        self.assertEqual(self.connection.moves, [(UPSTREAM, splice.COPY_SIZE)] * 3)

    def test_pipesOutOfFds(self) -> None:
        """
        A pipe that cannot be opened for want of fds is reported to the
        sweeper's C{outOfFds}, gives its budget back, and bulk data goes
        on through the copy buffer.
        """
        self.sweeper.budget = FdBudget(1000)

        def exhausted(size: int) -> object:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        self.patch(splice, "Pipe", exhausted)
        for _ in range(2):
            self.client.sendall(b"z" * splice.COPY_SIZE)
            self.clientEnd.doRead()
            self.assertEqual(recvAll(self.target), b"z" * splice.COPY_SIZE)
        self.assertEqual(self.outOfFds, 2)
        self.assertEqual(self.sweeper.budget.free, 1000)
        self.assertEqual(self.sweeper.holders, set())
        self.assertIsNone(self.pump.upstream.pipe)
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 0))

    def test_smallPipesNotUsed(self) -> None:
        """
        Pipes the kernel makes smaller than asked and than the copy buffer
        (as it does once a user's pipe memory is used up) are closed at once and not tried
        again for a sweep interval; bulk data goes on through the copy
        buffer.
        """
        realPipe = splice.Pipe
        opened: list[object] = []

        def countingPipe(size: int) -> object:
            self.assertEqual(size, PIPE_SIZE)
            pipe = realPipe(4096)
            opened.append(pipe)
            return pipe

        self.patch(splice, "Pipe", countingPipe)
        free = self.sweeper.budget.free
        fds = len(os.listdir("/proc/self/fd"))
        for advance, attempts in [(0, 2), (0, 2), (self.sweeper.interval, 4)]:
            self.clock.advance(advance)
            self.client.sendall(b"y" * splice.COPY_SIZE)
            self.clientEnd.doRead()
            self.assertEqual(recvAll(self.target), b"y" * splice.COPY_SIZE)
            self.assertEqual(len(opened), attempts)
            self.assertIsNone(self.pump.upstream.pipe)
        self.assertEqual(opened[0].size, 4096)
        self.assertEqual(self.sweeper.budget.free, free)
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 0))
        self.assertEqual(self.outOfFds, 0)


def recvAll(sock: socket.socket) -> bytes:
    """
    Everything readable now from a non-blocking socket, up to its end of
    stream.
    """
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
