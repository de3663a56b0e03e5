# -*- test-case-name: tests.test_splice -*-
"""
The Linux fast path: bytes move between the two sockets of a connection with
splice(2) through a pipe, without passing through Python, as the C original
does.

A L{SplicePump} is a connection's data path on two bare sockets: the
client's, accepted by L{socketproxyd.acceptor.Acceptor}, and the target's,
connected by L{socketproxyd.bareconnect.BareConnector} (or, for a target
reached through a Twisted endpoint, the socket of a paused transport the
pump borrows and hands back to close). A L{_SpliceEnd} per socket stands
in the reactor for it. The pipe is the buffer and the flow control: a
direction whose pipe cannot be emptied into its destination stops reading
its source until the destination is writable again. The pump only moves
bytes and reports to its L{socketproxyd.connection.Connection}.

Pipes exist only while data flows (see L{socketproxyd.pipes}), so an idle
connection holds just its two sockets.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import error
from twisted.internet.interfaces import IReactorFDSet
from twisted.python.failure import Failure

from .addresses import socketAddress
from .bareconnect import resetOnClose
from .connection import DOWNSTREAM, UPSTREAM, Connection
from .pipes import Pipe, PipeSweeper

ROUNDS = 8
COPY_SIZE = 64 * 1024
_copyBuffer = bytearray(COPY_SIZE)
_copyView = memoryview(_copyBuffer)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class _SpliceEnd:
    """
    One socket of a spliced connection, standing in the reactor for it,
    with the state of the direction its bytes leave by: read from this
    socket, in flight in C{pipe} (C{pending} bytes) or, before the
    direction has a pipe, in C{backlog}, then written to C{peer}'s socket.

    @ivar direction: the direction this socket is the source of.
    @ivar ended: whether its source sent its end of stream.
    @ivar shutting: whether its destination is to be shut down once what
        is in flight is out.
    @ivar shut: whether it has been.
    """

    __slots__ = (
        "pump", "socket", "direction", "peer",
        "pipe", "pending", "backlog", "ended", "shutting", "shut",
    )  # fmt: skip

    def __init__(self, pump: SplicePump, sock: socket.socket, direction: int) -> None:
        self.pump = pump
        self.socket = sock
        self.direction = direction
        self.peer: _SpliceEnd
        self.pipe: Pipe | None = None
        self.pending = 0
        self.backlog = b""
        self.ended = False
        self.shutting = False
        self.shut = False

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "splice"

    def doRead(self) -> None:
        if self.pump.running:
            self.pump.fill(self)

    def doWrite(self) -> None:
        if self.pump.running:
            self.pump.drain(self.peer)

    def connectionLost(self, reason: Failure) -> None:
        self.pump.lost(self, reason)

    def inFlight(self) -> bool:
        return bool(self.pending or self.backlog)

    def releasePipe(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


class SplicePump:
    """
    Moves a connection's bytes between two bare sockets: small reads are
    copied through one shared buffer, bulk goes through a pipe pair with
    splice(2); pipes exist only while bulk flows.

    The pump and its two ends are the whole per-connection state of the
    fast path besides the L{Connection}, kept small (slots, no callbacks)
    because an idle connection keeps them.

    @ivar upstream: the client's end (its bytes go to the target).
    @ivar downstream: the target's end, once attached.
    @ivar borrowed: the Twisted transport whose socket the target's end
        is, if it is one; it closes that socket.
    @ivar active: whether bytes moved since the sweeper last looked.
    """

    __slots__ = (
        "reactor", "sweeper", "keepalive", "connection", "upstream",
        "downstream", "borrowed", "running", "active", "finished",
    )  # fmt: skip

    takesSockets = True

    def __init__(
        self,
        reactor: IReactorFDSet,
        sweeper: PipeSweeper,
        client: socket.socket,
        keepalive: bool = False,
    ) -> None:
        self.reactor = reactor
        self.sweeper = sweeper
        self.keepalive = keepalive
        self.connection: Connection
        self.upstream = _SpliceEnd(self, client, UPSTREAM)
        self.downstream: _SpliceEnd | None = None
        self.borrowed = None
        self.running = False
        self.active = False
        self.finished = False

    def clientAddress(self) -> object:
        try:
            return socketAddress(self.upstream.socket.family, self.upstream.socket.getpeername())
        except OSError:
            return None

    def attach(self, target: object, preamble: bytes) -> None:
        """
        Start moving bytes, beginning with C{preamble} and what the client
        has already sent.

        Most clients speak first (an HTTP request, a TLS hello), and their
        first bytes have usually arrived by the time the target is
        connected: reading them at once saves a wake-up per connection.
        Where the server speaks first, the read finds nothing, one
        C{EAGAIN}.
        """
        if isinstance(target, socket.socket):
            sock = target
        else:
            transport = self.borrowed = target.transport
            transport.stopReading()
            transport.stopWriting()
            sock = transport.getHandle()
        upstream = self.upstream
        downstream = self.downstream = _SpliceEnd(self, sock, DOWNSTREAM)
        upstream.peer = downstream
        downstream.peer = upstream
        if self.keepalive:
            for end in (upstream, downstream):
                if end.socket.family != socket.AF_UNIX:
                    end.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.running = True
        self.reactor.addReader(downstream)
        if preamble:
            upstream.backlog = preamble
            if not self.flush(upstream):
                return
        self.reactor.addReader(upstream)
        self.fill(upstream)

    @property
    def ends(self) -> tuple[_SpliceEnd, ...]:
        if self.downstream is None:
            return (self.upstream,)
        return (self.upstream, self.downstream)

    def inFlight(self) -> bool:
        """
        Whether either direction holds bytes not yet written on.
        """
        return any(end.inFlight() for end in self.ends)

    def releasePipes(self) -> None:
        """
        Close both pipes (they hold nothing worth keeping).
        """
        for end in self.ends:
            end.releasePipe()
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
                end.pipe = Pipe()
        except OSError as e:
            self.releasePipes()
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.sweeper.outOfFds()
            return
        if min(self.upstream.pipe.size, self.downstream.pipe.size) < COPY_SIZE:
            self.releasePipes()
            self.sweeper.tooSmall()

    def _stop(self) -> None:
        if self.running:
            self.running = False
            for end in self.ends:
                self.reactor.removeReader(end)
                self.reactor.removeWriter(end)
            self.releasePipes()

    def close(self) -> None:
        """
        Close both sockets: each peer sees a normal end of stream (bytes
        still in a pipe are dropped).
        """
        if self.finished:
            return
        self.finished = True
        self._stop()
        self.upstream.socket.close()
        if self.borrowed is not None:
            self.borrowed.loseConnection()
        elif self.downstream is not None:
            self.downstream.socket.close()
        self.connection.closed()

    def abort(self) -> None:
        """
        Close both sockets with a reset.
        """
        if self.finished:
            return
        self.finished = True
        self._stop()
        resetOnClose(self.upstream.socket)
        self.upstream.socket.close()
        if self.borrowed is not None:
            self.borrowed.abortConnection()
        elif self.downstream is not None:
            resetOnClose(self.downstream.socket)
            self.downstream.socket.close()
        self.connection.closed()

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
        total = 0
        for _ in range(ROUNDS):
            space = pipe.size - end.pending
            try:
                moved = os.splice(source, pipe.write, space, flags=_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self.connection.failed()
                return
            if moved == 0:
                self._moved(end, total)
                self._sourceEnded(end)
                return
            end.pending += moved
            total += moved
            if not self.flush(end):
                break
        self._moved(end, total)

    def _moved(self, end: _SpliceEnd, count: int) -> None:
        if count and self.running:
            self.active = True
            self.connection.moved(end.direction, count)

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
            self.connection.failed()
            return
        if moved == 0:
            self._sourceEnded(end)
            return
        try:
            sent = end.peer.socket.send(_copyView[:moved])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.connection.failed()
            return
        if sent < moved:
            end.backlog = bytes(_copyView[sent:moved])
            self._waitForDestination(end)
        elif moved == COPY_SIZE:
            self._allocatePipes()
        self._moved(end, moved)

    def _sourceEnded(self, end: _SpliceEnd) -> None:
        end.ended = True
        self.reactor.removeReader(end)
        self.connection.readEnded(end.direction)

    def shutdownWrite(self, direction: int) -> None:
        end = self.upstream if direction == UPSTREAM else self.downstream
        end.shutting = True
        if not end.inFlight():
            self._shut(end)

    def _shut(self, end: _SpliceEnd) -> None:
        """
        The direction leaving by C{end} is finished: shut down writing on
        its peer (not for the second direction to finish: closing the
        sockets, the connection's next step, sends the same FIN).
        """
        end.shut = True
        if not end.peer.shut:
            try:
                end.peer.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.connection.writeShut(end.direction)

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
            self.connection.failed()
            return False
        if end.pending or end.backlog:
            self._waitForDestination(end)
            return False
        if end.shutting:
            self.reactor.removeWriter(destination)
            self._shut(end)
            return False
        return True

    def drain(self, end: _SpliceEnd) -> None:
        """
        C{end}'s peer became writable again: empty what is in flight into
        it, then read C{end} again.
        """
        if self.flush(end):
            self.reactor.removeWriter(end.peer)
            if not end.ended:
                self.reactor.addReader(end)

    def lost(self, end: _SpliceEnd, reason: Failure) -> None:
        """
        The reactor saw a hang-up or error on C{end}'s socket (and took it
        out of the reactor). A hang-up with nothing on its way into the
        socket ends its source like an end of stream; anything else resets
        the connection. The reactor reports a reset received as a hang-up
        too: the socket's pending error tells them apart.
        """
        if not self.running:
            return
        code = end.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not code and isinstance(reason.value, error.ConnectionDone) and not end.peer.inFlight():
            if not end.ended:
                self._sourceEnded(end)
            return
        self.connection.failed()
