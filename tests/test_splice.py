"""
Unit tests for L{socketproxyd.splice}: real socket pairs and pipes, a fake
reactor that records registrations, and the reactor's calls made by hand.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd import splice
from socketproxyd.fdlimit import FdBudget
from socketproxyd.splice import PipeSweeper, Splicer

from .fakes import FakeFDReactor


class SocketTransport:
    """
    The parts of a Twisted transport the splicer uses.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.reading = True

    def fileno(self) -> int:
        return self.socket.fileno()

    def stopReading(self) -> None:
        self.reading = False

    def stopWriting(self) -> None:
        pass


class Side:
    """
    Stands in for a relay protocol: a transport and a byte counter.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.transport = SocketTransport(sock)
        self.received = 0


class SplicerTests(SynchronousTestCase):
    """
    The test case is the splicer's owner: it counts activity and records
    how the splicer ended.
    """

    def setUp(self) -> None:
        if not splice.available():
            raise SkipTest("splice(2) is not available")
        self.reactor = FakeFDReactor()
        self.clock = Clock()
        self.sweeper = PipeSweeper(self.clock)
        self.client, clientInside = self.pair()
        self.target, targetInside = self.pair()
        self.clientSide, self.targetSide = Side(clientInside), Side(targetInside)
        self.activity = 0
        self.ended: list[str] = []
        self.outOfFds = 0
        self.splicer = Splicer(
            self.reactor, self.sweeper, self, self.clientSide, self.targetSide, timed=True
        )
        self.splicer.start()
        self.clientEnd, self.targetEnd = self.splicer.ends

    def pair(self) -> tuple[socket.socket, socket.socket]:
        outside, inside = socket.socketpair()
        for sock in (outside, inside):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return outside, inside

    def resetTimeout(self) -> None:
        self.activity += 1

    def spliceEnded(self, how: str) -> None:
        self.ended.append(how)

    def spliceOutOfFds(self) -> None:
        self.outOfFds += 1

    def test_startTakesOver(self) -> None:
        self.assertFalse(self.clientSide.transport.reading)
        self.assertEqual(self.reactor.readers, {self.clientEnd, self.targetEnd})

    def test_startForwardsWaitingBytes(self) -> None:
        """
        What the client sent before the splicer started goes to the target
        from L{Splicer.start} itself, without waiting for a read event;
        with nothing waiting, start sends nothing.
        """
        self.assertEqual(self.activity, 0)
        self.assertRaises(BlockingIOError, self.target.recv, 100)
        client, clientInside = self.pair()
        target, targetInside = self.pair()
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        splicer = Splicer(self.reactor, self.sweeper, self, Side(clientInside), Side(targetInside))
        splicer.start()
        self.assertEqual(target.recv(100), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(splicer.upstream.side.received, 18)
        self.assertIn(splicer.upstream, self.reactor.readers)
        splicer.stop()

    def test_bytesBothWays(self) -> None:
        self.client.sendall(b"request")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"request")
        self.target.sendall(b"reply!")
        self.targetEnd.doRead()
        self.assertEqual(self.client.recv(100), b"reply!")
        self.assertEqual((self.clientSide.received, self.targetSide.received), (7, 6))
        self.assertEqual(self.activity, 2)

    def test_halfCloseThenDone(self) -> None:
        """
        EOF from the client shuts down writing to the target; the reply
        still flows; EOF from the target finishes the connection, and the
        owner's close of the sockets ends the reply direction.
        """
        self.client.sendall(b"req")
        self.client.shutdown(socket.SHUT_WR)
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"req")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"")
        self.assertNotIn(self.clientEnd, self.reactor.readers)
        self.target.sendall(b"REPLY")
        self.target.shutdown(socket.SHUT_WR)
        self.targetEnd.doRead()
        self.assertEqual(self.client.recv(100), b"REPLY")
        self.assertEqual(self.ended, [])
        self.targetEnd.doRead()
        self.assertEqual(self.ended, ["done"])
        self.assertEqual(self.reactor.readers | self.reactor.writers, set())
        self.clientSide.transport.socket.close()
        self.assertEqual(self.client.recv(100), b"")

    def test_backpressure(self) -> None:
        """
        While the destination cannot take the pipe's bytes, the source is
        not read; once it drains, reading resumes and every byte arrives.
        """
        self.target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        chunk = os.urandom(1 << 16)
        sent = received = b""
        while self.clientEnd in self.reactor.readers:
            try:
                self.client.send(chunk)
                sent += chunk
            except BlockingIOError:
                pass
            self.clientEnd.doRead()
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

    def test_resetReported(self) -> None:
        self.target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        self.target.close()
        self.client.sendall(b"x")
        self.clientEnd.doRead()
        self.assertEqual(self.ended, ["reset"])
        self.assertFalse(self.splicer.running)

    def test_smallMessagesNeedNoPipe(self) -> None:
        """
        Reads shorter than the copy buffer are copied; no pipe is opened.
        """
        self.client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(100), b"GET / HTTP/1.1\r\n\r\n")
        self.assertIsNone(self.splicer.upstream.pipe)
        self.assertEqual(self.sweeper.holders, set())

    def test_idlePipesSwept(self) -> None:
        """
        A full buffer's worth opens the pipes; an interval without any
        traffic closes them.
        """
        self.client.sendall(b"x" * splice.COPY_SIZE)
        self.clientEnd.doRead()
        self.assertEqual(len(recvAll(self.target)), splice.COPY_SIZE)
        self.assertIsNotNone(self.splicer.upstream.pipe)
        self.assertIsNotNone(self.splicer.downstream.pipe)
        self.client.sendall(b"y")
        self.clientEnd.doRead()
        self.assertEqual(self.target.recv(10), b"y")
        self.clock.advance(PipeSweeper.interval)
        self.assertIsNotNone(self.splicer.upstream.pipe)
        self.clock.advance(PipeSweeper.interval)
        self.assertIsNone(self.splicer.upstream.pipe)
        self.assertIsNone(self.splicer.downstream.pipe)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sweeper.holders, set())

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
        self.assertIsNone(self.splicer.upstream.pipe)
        self.assertEqual(self.ended, [])
        self.assertEqual(self.clientSide.received, 3 * splice.COPY_SIZE)

    def test_smallPipesNotUsed(self) -> None:
        """
        Pipes the kernel makes smaller than the copy buffer (as it does once
        a user's pipe memory is used up) are closed at once and not tried
        again for a sweep interval; bulk data goes on through the copy
        buffer.
        """
        self.patch(splice, "PIPE_SIZE", 4096)
        realPipe = splice._Pipe
        opened: list[object] = []

        def countingPipe() -> object:
            pipe = realPipe()
            opened.append(pipe)
            return pipe

        self.patch(splice, "_Pipe", countingPipe)
        free = self.sweeper.budget.free
        fds = len(os.listdir("/proc/self/fd"))
        for advance, attempts in [(0, 2), (0, 2), (self.sweeper.interval, 4)]:
            self.clock.advance(advance)
            self.client.sendall(b"y" * splice.COPY_SIZE)
            self.clientEnd.doRead()
            self.assertEqual(recvAll(self.target), b"y" * splice.COPY_SIZE)
            self.assertEqual(len(opened), attempts)
            self.assertIsNone(self.splicer.upstream.pipe)
        self.assertEqual(opened[0].size, 4096)
        self.assertEqual(self.sweeper.budget.free, free)
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)
        self.assertEqual(self.ended, [])


def recvAll(sock: socket.socket) -> bytes:
    """
    Everything readable now from a non-blocking socket.
    """
    chunks = []
    while True:
        try:
            chunks.append(sock.recv(1 << 20))
        except BlockingIOError:
            return b"".join(chunks)
