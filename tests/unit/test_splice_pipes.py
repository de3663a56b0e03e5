"""
Unit tests for the splice pump's pipes (L{socketproxyd.stream.splice.pipes}): small
messages copied without one, idle pipes swept, their size, and what happens
when the descriptor budget is full or descriptors run out.
"""

from __future__ import annotations

import errno
import os

from socketproxyd.config.settings import PIPE_SIZE, pipeMaxSize
from socketproxyd.events import UPSTREAM
from socketproxyd.fdbudget import FdBudget
from socketproxyd.stream.splice import pump as splice
from socketproxyd.stream.splice.pipes import PipeSweeper
from tests.support.sockets import recvAvailable
from tests.support.splicing import SplicePumpTestCase


class SplicePipeTests(SplicePumpTestCase):
    """
    A pump between two UNIX socket pairs, watched for the pipes it takes
    and gives back.
    """

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
        self.assertEqual(len(recvAvailable(self.target)), splice.COPY_SIZE)
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
            received = recvAvailable(self.target)
            while len(received) < len(data):
                self.clientEnd.doRead()
                received += recvAvailable(self.target)
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
            self.assertEqual(len(recvAvailable(self.target)), splice.COPY_SIZE)
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
            self.assertEqual(recvAvailable(self.target), b"z" * splice.COPY_SIZE)
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
            self.assertEqual(recvAvailable(self.target), b"y" * splice.COPY_SIZE)
            self.assertEqual(len(opened), attempts)
            self.assertIsNone(self.pump.upstream.pipe)
        self.assertEqual(opened[0].size, 4096)
        self.assertEqual(self.sweeper.budget.free, free)
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)
        self.assertEqual((self.connection.failures, self.connection.closings), (0, 0))
        self.assertEqual(self.outOfFds, 0)
