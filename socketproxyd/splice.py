# -*- test-case-name: tests.test_splice -*-
"""
The Linux fast path: bytes move between the two sockets of a connection with
splice(2) through a pipe, without passing through Python, as the C original
does.

The sockets' transports stay their owners (their close, abort and
connectionLost paths are used unchanged: Twisted's transports, or a
L{socketproxyd.bareconnect.BareTarget}); while a L{Splicer} runs, they are
taken out of the reactor and a L{_SpliceEnd} per socket is registered in
their place. The pipe is the buffer and the flow control: a direction
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
from typing import Protocol as TypingProtocol

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


def available() -> bool:
    """
    Whether this platform has splice(2) (Linux, Python 3.10+).
    """
    return hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")


def spliceable(transport: object) -> bool:
    """
    Whether a transport is one of Twisted's TCP or UNIX socket transports,
    whose bytes can be spliced (not TLS, not a test double), with nothing
    queued in its write buffer.
    """
    return (
        type(transport) in _SOCKET_TRANSPORTS
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    )


def _socketTransports() -> frozenset[type]:
    if not available():
        return frozenset()
    from twisted.internet import tcp, unix

    from .pausedaccept import TRANSPORTS

    return frozenset((tcp.Server, tcp.Client, unix.Server, unix.Client)) | TRANSPORTS


_SOCKET_TRANSPORTS = _socketTransports()


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


class _SpliceEnd:
    """
    One socket of a spliced connection, standing in the reactor for its
    transport, with the state of the direction its bytes leave by: from
    this socket to its C{peer}, in flight in C{pipe} (C{pending} bytes) or,
    before the direction has a pipe, in C{backlog}.

    @ivar side: the relay protocol whose socket this is; its C{received}
        counts the bytes read here.
    """

    __slots__ = (
        "splicer", "side", "socket", "peer",
        "pipe", "pending", "backlog", "eof", "done",
    )  # fmt: skip

    def __init__(self, splicer: Splicer, side: object) -> None:
        self.splicer = splicer
        self.side = side
        self.socket: socket.socket = side.transport.socket
        self.peer: _SpliceEnd
        self.pipe: _Pipe | None = None
        self.pending = 0
        self.backlog = b""
        self.eof = False
        self.done = False

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "splice"

    def doRead(self) -> None:
        self.splicer.fill(self)

    def doWrite(self) -> None:
        self.splicer.drain(self.peer)

    def connectionLost(self, reason: Failure) -> None:
        self.splicer.lost(self, reason)

    def releasePipe(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


class PipeSweeper:
    """
    Decides when a connection may open a pipe pair (taking its fds from the
    fd budget), and closes the pipes of connections that moved nothing for
    one interval.
    """

    interval = 1.0

    def __init__(self, clock: IReactorTime, budget: FdBudget | None = None) -> None:
        self.clock = clock
        self.budget = budget if budget is not None else FdBudget()
        self.holders: set[Splicer] = set()
        self._smallPipesUntil = 0.0
        self._loop: LoopingCall | None = None

    def acquire(self, splicer: Splicer) -> bool:
        """
        Whether C{splicer} may open its pipes now; if so, their fds are
        taken from the budget and given back by L{released}. Not while the
        fd budget has no room, nor for an interval after the kernel gave
        pipes too small to be worth splicing through (see L{tooSmall}).
        """
        if self.clock.seconds() < self._smallPipesUntil or not self.budget.takePipes():
            return False
        self.holders.add(splicer)
        if self._loop is None:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)
        return True

    def tooSmall(self) -> None:
        """
        The pipes just opened were smaller than the copy buffer, as the
        kernel makes them once the user's pipe memory is used up
        (C{fs.pipe-user-pages-soft}, for services without
        C{CAP_SYS_RESOURCE}): open none for one interval.
        """
        self._smallPipesUntil = self.clock.seconds() + self.interval

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


class SpliceOwner(TypingProtocol):
    """
    What a L{Splicer} reports to: the connection it moves the bytes of.
    """

    def resetTimeout(self) -> None:
        """
        Bytes moved (called only for a splicer told the owner is timed).
        """

    def spliceEnded(self, how: str) -> None:
        """
        The splicer stopped: C{"done"} once both directions are finished
        (the second one's destination is not shut down: closing the
        sockets, the owner's next step, ends it), or C{"reset"} after an
        error on either socket. The sockets are out of the reactor.
        """

    def spliceOutOfFds(self) -> None:
        """
        A pipe could not be opened for want of fds; the connection goes on
        copying.
        """


class Splicer:
    """
    Moves a connection's bytes with splice(2) in both directions, with the
    same half-close, reset, byte-count and idle semantics as the transport
    path.

    The splicer and its two ends are the whole per-connection state of the
    fast path, kept small (slots, no callbacks of its own) because an idle
    connection keeps them.

    @ivar upstream: the client's end (its bytes go to the target).
    @ivar downstream: the target's end.
    @ivar timed: whether to call the owner's C{resetTimeout} after each move.
    """

    __slots__ = (
        "reactor",
        "sweeper",
        "owner",
        "upstream",
        "downstream",
        "timed",
        "running",
        "active",
    )

    def __init__(
        self,
        reactor: IReactorFDSet,
        sweeper: PipeSweeper,
        owner: SpliceOwner,
        clientSide: object,
        targetSide: object,
        timed: bool = False,
    ) -> None:
        self.reactor = reactor
        self.sweeper = sweeper
        self.owner = owner
        self.timed = timed
        self.upstream = _SpliceEnd(self, clientSide)
        self.downstream = _SpliceEnd(self, targetSide)
        self.upstream.peer = self.downstream
        self.downstream.peer = self.upstream
        self.running = False
        self.active = False

    @property
    def ends(self) -> tuple[_SpliceEnd, _SpliceEnd]:
        return (self.upstream, self.downstream)

    def inFlight(self) -> bool:
        """
        Whether either pipe holds bytes not yet written on.
        """
        return any(end.pending or end.backlog for end in self.ends)

    def releasePipes(self) -> None:
        """
        Close both pipes (they hold nothing worth keeping).
        """
        self.upstream.releasePipe()
        self.downstream.releasePipe()
        self.sweeper.released(self)

    def _allocatePipes(self) -> None:
        """
        Open the pipes of both directions together, if the sweeper allows
        it; otherwise (or if the system is out of fds, or the pipes are
        smaller than the copy buffer, which would make splicing slower than
        copying) the connection keeps copying through the shared buffer,
        which needs no fd.
        """
        if not self.sweeper.acquire(self):
            return
        try:
            for end in self.ends:
                end.pipe = _Pipe()
        except OSError as e:
            self.releasePipes()
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.owner.spliceOutOfFds()
            return
        if min(self.upstream.pipe.size, self.downstream.pipe.size) < COPY_SIZE:
            self.releasePipes()
            self.sweeper.tooSmall()

    def start(self) -> None:
        """
        Take both sockets out of their transports' hands and start moving,
        beginning with what the client has already sent.

        Most clients speak first (an HTTP request, a TLS hello), and their
        first bytes have usually arrived by the time the target is
        connected: reading them at once saves a wake-up per connection.
        Where the server speaks first, the read finds nothing, one
        C{EAGAIN}.
        """
        self.running = True
        for end in self.ends:
            end.side.transport.stopReading()
            end.side.transport.stopWriting()
            self.reactor.addReader(end)
        self.fill(self.upstream)

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

    def _moved(self) -> None:
        self.active = True
        if self.timed:
            self.owner.resetTimeout()

    def fill(self, end: _SpliceEnd) -> None:
        """
        C{end}'s socket is readable: move what it has into the pipe and on
        to its peer, and again while the destination keeps up, until the
        source has nothing more (EAGAIN) or for at most L{ROUNDS} rounds.

        Only bulk transfers have a pipe, and their source has usually
        received more by the time a round is done: going on saves a return
        to the reactor, which costs more than the one C{EAGAIN} that ends
        the loop. Small messages, whose next read would be an C{EAGAIN},
        take the copy path, which stops after one read.
        """
        pipe = end.pipe
        if pipe is None:
            self._copy(end)
            return
        source = end.socket.fileno()
        for _ in range(ROUNDS):
            space = pipe.size - end.pending
            try:
                moved = os.splice(source, pipe.write, space, flags=_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self._failed()
                return
            if moved == 0:
                self._sourceEnded(end)
                return
            end.pending += moved
            end.side.received += moved
            if not self.flush(end):
                break
        self._moved()

    def _copy(self, end: _SpliceEnd) -> None:
        """
        A direction without a pipe reads into a shared buffer and sends from
        it: for the small messages of most connections that costs the same
        two system calls as splicing, without opening a pipe pair. A read
        that fills the buffer means bulk data: the connection opens its
        pipes and splices from then on.
        """
        try:
            moved = end.socket.recv_into(_copyBuffer)
        except BlockingIOError:
            return
        except OSError:
            self._failed()
            return
        if moved == 0:
            self._sourceEnded(end)
            return
        end.side.received += moved
        self._moved()
        try:
            sent = end.peer.socket.send(_copyView[:moved])
        except BlockingIOError:
            sent = 0
        except OSError:
            self._failed()
            return
        if sent < moved:
            end.backlog = bytes(_copyView[sent:moved])
            self._waitForDestination(end)
        elif moved == COPY_SIZE:
            self._allocatePipes()

    def _sourceEnded(self, end: _SpliceEnd) -> None:
        end.eof = True
        self.reactor.removeReader(end)
        if not (end.pending or end.backlog):
            self._finish(end)

    def _waitForDestination(self, end: _SpliceEnd) -> None:
        """
        Stop reading C{end} until its peer takes what is in flight: this is
        the flow control.
        """
        self.reactor.removeReader(end)
        self.reactor.addWriter(end.peer)

    def flush(self, end: _SpliceEnd) -> bool:
        """
        Move what C{end} has in flight (backlog, then pipe) to its peer;
        stop reading C{end} while the peer cannot take it all. Whether all
        is out and C{end} may be read again.
        """
        destination = end.peer
        try:
            if end.backlog:
                sent = destination.socket.send(end.backlog)
                end.backlog = end.backlog[sent:]
                if end.backlog:
                    raise BlockingIOError
            if end.pending:
                pipeOut, sink = end.pipe.read, destination.socket.fileno()
                while end.pending:
                    end.pending -= os.splice(pipeOut, sink, end.pending, flags=_FLAGS)
        except BlockingIOError:
            pass
        except OSError:
            self._failed()
            return False
        if end.pending or end.backlog:
            self._waitForDestination(end)
            return False
        if end.eof:
            self.reactor.removeWriter(destination)
            self._finish(end)
            return False
        return True

    def drain(self, end: _SpliceEnd) -> None:
        """
        C{end}'s peer became writable again: empty the pipe into it, then
        read C{end} again.
        """
        if self.flush(end):
            self.reactor.removeWriter(end.peer)
            self.reactor.addReader(end)

    def _finish(self, end: _SpliceEnd) -> None:
        """
        The direction leaving by C{end} is finished (EOF read, nothing in
        flight): shut down writing on its peer; once both directions are
        done, the connection is (and closing its sockets ends the second
        direction the same way).
        """
        end.done = True
        if end.peer.done:
            self.stop()
            self.owner.spliceEnded("done")
            return
        try:
            end.peer.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _failed(self) -> None:
        self.stop()
        self.owner.spliceEnded("reset")

    def lost(self, end: _SpliceEnd, reason: Failure) -> None:
        """
        The reactor saw a hang-up or error on a socket while it was ours.
        """
        if not self.running:
            return
        if isinstance(reason.value, error.ConnectionDone) and end.pending == 0:
            self._sourceEnded(end)
            if self.running and not end.peer.done:
                self.reactor.addReader(end.peer)
            return
        self._failed()
