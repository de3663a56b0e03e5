# -*- test-case-name: tests.test_splice -*-
"""
The Linux fast path: bytes move between the two sockets of a connection with
splice(2) through a pipe, without passing through Python, as the C original
does.

The Twisted transports stay the owners of the sockets (their close, abort
and connectionLost paths are used unchanged); while a L{Splicer} runs, they
are taken out of the reactor and a L{_SpliceEnd} per socket is registered
in their place. The pipe is the buffer and the flow control: a direction
whose pipe cannot be emptied into its destination stops reading its source
until the destination is writable again.

Pipes exist only while data flows: a L{PipeSweeper} closes the pipes of
directions that moved nothing for a sweep interval, so an idle connection
holds just its two sockets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable

from twisted.internet import error
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from .fdlimit import FDS_PER_PIPE_PAIR, FdBudget

PIPE_SIZE = 256 * 1024
ROUNDS = 8
COPY_SIZE = 64 * 1024
_copyBuffer = bytearray(COPY_SIZE)
_copyView = memoryview(_copyBuffer)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def available() -> bool:
    """
    Whether this platform has splice(2) (Linux, Python 3.10+).
    """
    return hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")


def spliceable(transport: object) -> bool:
    """
    Whether a transport is a plain stream socket whose bytes can be spliced
    (not TLS, not a test double), with nothing queued in its write buffer.
    """
    sock = getattr(transport, "socket", None)
    return (
        _AVAILABLE
        and isinstance(sock, socket.socket)
        and sock.family in _FAMILIES
        and type(transport).__name__ in ("Server", "Client", "BareSocketTransport")
        and not getattr(transport, "dataBuffer", b"")
        and not getattr(transport, "_tempDataBuffer", None)
    )


_AVAILABLE = available()


class _Pipe:
    """
    A non-blocking pipe pair sized for bulk transfers.
    """

    __slots__ = ("read", "write", "size")

    def __init__(self) -> None:
        self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        self.size = fcntl.fcntl(self.write, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


class _Direction:
    """
    One direction of a connection: from C{source} to C{destination},
    with the bytes in flight in C{pipe} (C{pending} of them), or, before
    the direction has a pipe, in C{backlog}.
    """

    __slots__ = ("source", "destination", "counter", "pipe", "pending", "backlog", "eof", "done")

    def __init__(self, source: _SpliceEnd, destination: _SpliceEnd, counter: object) -> None:
        self.source = source
        self.destination = destination
        self.counter = counter
        self.pipe: _Pipe | None = None
        self.pending = 0
        self.backlog = b""
        self.eof = False
        self.done = False

    def releasePipe(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


class _SpliceEnd:
    """
    Stands in the reactor for one socket while its connection is spliced.
    """

    __slots__ = ("splicer", "transport", "socket", "fd", "outgoing", "incoming")

    def __init__(self, splicer: Splicer, transport: object) -> None:
        self.splicer = splicer
        self.transport = transport
        self.socket: socket.socket = transport.socket
        self.fd = transport.fileno()
        self.outgoing: _Direction
        self.incoming: _Direction

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "splice"

    def doRead(self) -> None:
        self.splicer.fill(self.outgoing)

    def doWrite(self) -> None:
        self.splicer.drain(self.incoming)

    def connectionLost(self, reason: Failure) -> None:
        self.splicer.lost(self, reason)


class PipeSweeper:
    """
    Takes the fds of pipe pairs from the fd budget, and closes the pipes of
    connections that moved nothing for one interval.
    """

    interval = 1.0

    def __init__(self, clock: IReactorTime, budget: FdBudget | None = None) -> None:
        self.clock = clock
        self.budget = budget if budget is not None else FdBudget()
        self.holders: set[Splicer] = set()
        self._loop: LoopingCall | None = None

    def holding(self, splicer: Splicer) -> None:
        """
        C{splicer} has just opened its pipes (after L{FdBudget.takePipes}).
        """
        self.holders.add(splicer)
        if self._loop is None:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def released(self, splicer: Splicer) -> None:
        """
        C{splicer} closed its pipes.
        """
        if splicer in self.holders:
            self.holders.discard(splicer)
            self.budget.give(FDS_PER_PIPE_PAIR)

    def sweep(self) -> None:
        """
        Close the pipes of every connection that was not active since the
        last sweep and has nothing in flight; stop when no pipe is left.
        """
        for splicer in list(self.holders):
            if splicer.active:
                splicer.active = False
            elif not splicer.inFlight():
                splicer.releasePipes()
        if not self.holders and self._loop is not None:
            self._loop.stop()
            self._loop = None


class Splicer:
    """
    Moves a connection's bytes with splice(2) in both directions, with the
    same half-close, reset, byte-count and idle semantics as the transport
    path.

    @param onActivity: called after each move (the idle timeout's reset).
    @param onEnd: called with C{"done"} once both directions are finished
        (the second one's destination is not shut down: closing the sockets,
        which is the caller's next step, ends it), or C{"reset"} after an
        error on either socket; the splicer has by then given the sockets
        back to their transports.
    @param onOutOfFds: called when a pipe could not be opened for want of
        fds (the connection goes on copying).
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        sweeper: PipeSweeper,
        clientSide: object,
        targetSide: object,
        onActivity: Callable[[], None],
        onEnd: Callable[[str], None],
        onOutOfFds: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.sweeper = sweeper
        self.onActivity = onActivity
        self.onEnd = onEnd
        self.onOutOfFds = onOutOfFds
        client = _SpliceEnd(self, clientSide.transport)
        target = _SpliceEnd(self, targetSide.transport)
        self.ends = (client, target)
        self.upstream = _Direction(client, target, clientSide)
        self.downstream = _Direction(target, client, targetSide)
        client.outgoing = target.incoming = self.upstream
        target.outgoing = client.incoming = self.downstream
        self.running = False
        self.active = False

    def inFlight(self) -> bool:
        """
        Whether either pipe holds bytes not yet written on.
        """
        return any(d.pending or d.backlog for d in (self.upstream, self.downstream))

    def releasePipes(self) -> None:
        """
        Close both pipes (they hold nothing worth keeping).
        """
        self.upstream.releasePipe()
        self.downstream.releasePipe()
        self.sweeper.released(self)

    def _allocatePipes(self) -> None:
        """
        Open the pipes of both directions together, if the fd budget has
        room; otherwise (or if the system is out of fds) the connection
        keeps copying through the shared buffer, which needs no fd.
        """
        if not self.sweeper.budget.takePipes():
            return
        self.sweeper.holding(self)
        try:
            for direction in (self.upstream, self.downstream):
                direction.pipe = _Pipe()
        except OSError as e:
            self.releasePipes()
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.onOutOfFds()

    def start(self) -> None:
        """
        Take both sockets out of their transports' hands and start moving.
        """
        self.running = True
        for end in self.ends:
            end.transport.stopReading()
            end.transport.stopWriting()
            self.reactor.addReader(end)

    def stop(self) -> None:
        """
        Give the sockets back to their transports; bytes still in a pipe
        are dropped.
        """
        if not self.running:
            return
        self.running = False
        for end in self.ends:
            self.reactor.removeReader(end)
            self.reactor.removeWriter(end)
        self.releasePipes()

    def fill(self, direction: _Direction) -> None:
        """
        The source is readable: move what it has into the pipe and on to
        the destination, a few more rounds while the source fills the pipe
        and the destination keeps up (a short read means the source is
        drained for now, and another try would only cost an EAGAIN).
        """
        if direction.pipe is None:
            self._copy(direction)
            return
        pipe = direction.pipe
        source = direction.source.fd
        for _ in range(ROUNDS):
            space = pipe.size - direction.pending
            try:
                moved = os.splice(source, pipe.write, space, flags=_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self._failed(direction.source)
                return
            if moved == 0:
                self._sourceEnded(direction)
                return
            direction.pending += moved
            direction.counter.received += moved
            if not self.flush(direction) or moved < space:
                break
        self.active = True
        self.onActivity()

    def _copy(self, direction: _Direction) -> None:
        """
        A direction without a pipe reads into a shared buffer and sends from
        it: for the small messages of most connections that costs the same
        two system calls as splicing, without opening a pipe pair. A read
        that fills the buffer means bulk data: the connection opens its
        pipes and splices from then on.
        """
        try:
            moved = direction.source.socket.recv_into(_copyBuffer)
        except BlockingIOError:
            return
        except OSError:
            self._failed(direction.source)
            return
        if moved == 0:
            self._sourceEnded(direction)
            return
        direction.counter.received += moved
        self.active = True
        self.onActivity()
        try:
            sent = direction.destination.socket.send(_copyView[:moved])
        except BlockingIOError:
            sent = 0
        except OSError:
            self._failed(direction.destination)
            return
        if sent < moved:
            direction.backlog = bytes(_copyView[sent:moved])
            self._waitForDestination(direction)
        elif moved == COPY_SIZE:
            self._allocatePipes()

    def _sourceEnded(self, direction: _Direction) -> None:
        direction.eof = True
        self.reactor.removeReader(direction.source)
        if not (direction.pending or direction.backlog):
            self._finish(direction)

    def _waitForDestination(self, direction: _Direction) -> None:
        """
        Stop reading the source until the destination takes what is in
        flight: this is the flow control.
        """
        self.reactor.removeReader(direction.source)
        self.reactor.addWriter(direction.destination)

    def flush(self, direction: _Direction) -> bool:
        """
        Move what is in flight (backlog, then pipe) to the destination;
        stop reading the source while the destination cannot take it all.
        Whether all is out and the source may be read again.
        """
        try:
            if direction.backlog:
                sent = direction.destination.socket.send(direction.backlog)
                direction.backlog = direction.backlog[sent:]
                if direction.backlog:
                    raise BlockingIOError
            while direction.pending:
                direction.pending -= os.splice(
                    direction.pipe.read, direction.destination.fd, direction.pending, flags=_FLAGS
                )
        except BlockingIOError:
            pass
        except OSError:
            self._failed(direction.destination)
            return False
        if direction.pending or direction.backlog:
            self._waitForDestination(direction)
            return False
        if direction.eof:
            self.reactor.removeWriter(direction.destination)
            self._finish(direction)
            return False
        return True

    def drain(self, direction: _Direction) -> None:
        """
        The destination became writable again: empty the pipe into it, then
        read the source again.
        """
        if self.flush(direction):
            self.reactor.removeWriter(direction.destination)
            self.reactor.addReader(direction.source)

    def _finish(self, direction: _Direction) -> None:
        """
        A direction's source ended and its pipe is empty: shut down writing
        on the destination; once both directions are done, the connection is
        (and closing its sockets ends the second direction the same way).
        """
        direction.done = True
        if self.upstream.done and self.downstream.done:
            self.stop()
            self.onEnd("done")
            return
        try:
            direction.destination.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _failed(self, end: _SpliceEnd) -> None:
        self.stop()
        self.onEnd("reset")

    def lost(self, end: _SpliceEnd, reason: Failure) -> None:
        """
        The reactor saw a hang-up or error on a socket while it was ours.
        """
        if not self.running:
            return
        if isinstance(reason.value, error.ConnectionDone) and end.outgoing.pending == 0:
            end.outgoing.eof = True
            self._finish(end.outgoing)
            if self.running and not end.incoming.done:
                self.reactor.addReader(end.incoming.source)
            return
        self.stop()
        self.onEnd("reset")
