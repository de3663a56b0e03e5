# -*- test-case-name: tests.unit.test_splice_pump -*-
"""
The Linux fast path: bytes move between the two sockets of a connection with
splice(2) through a pipe, without passing through Python, as the C original
does.

A L{SplicePump} is a connection's data path on two bare sockets: the
client's, accepted by L{socketproxyd.stream.acceptor.Acceptor}, and the target's,
connected by L{socketproxyd.stream.splice.connector.BareConnector} (or, for a target
reached through a Twisted endpoint, the socket of a paused transport the
pump borrows and hands back to close). A
L{socketproxyd.stream.splice.end.SpliceEnd} per socket stands in the reactor for
it and moves the bytes that leave by it; the pump owns the pair: attaching,
pipes, closing and resets. It only moves bytes and reports to its
L{socketproxyd.stream.connection.Connection}.

Pipes exist only while data flows (see L{socketproxyd.stream.splice.pipes}), so an idle
connection holds just its two sockets.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import cast

from twisted.internet import error, tcp
from twisted.internet.interfaces import IAddress, IReactorFDSet
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from socketproxyd.addresses import socketAddress
from socketproxyd.events import DOWNSTREAM, UPSTREAM
from socketproxyd.stream.connection import Connection
from socketproxyd.stream.splice.end import COPY_SIZE, SpliceEnd
from socketproxyd.stream.splice.pipes import Pipe, PipeSweeper

__all__ = ["COPY_SIZE", "SplicePump", "resetOnClose"]

_LINGER_RESET = struct.pack("ii", 1, 0)


def resetOnClose(sock: socket.socket) -> None:
    """
    Make closing C{sock} send a TCP RST instead of a FIN, so its peer sees
    a failure rather than a normal end of stream.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


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
        self.upstream = SpliceEnd(self, client, UPSTREAM)
        self.downstream: SpliceEnd | None = None
        self.borrowed: tcp.Connection | None = None
        self.running = False
        self.active = False
        self.finished = False

    def clientAddress(self) -> IAddress | None:
        try:
            return socketAddress(self.upstream.socket.family, self.upstream.socket.getpeername())
        except OSError:
            return None

    def attach(self, target: socket.socket | Protocol, preamble: bytes) -> None:
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
            transport = self.borrowed = cast(tcp.Connection, target.transport)
            transport.stopReading()
            transport.stopWriting()
            sock = transport.getHandle()
        upstream, downstream = self._join(sock)
        downstream.startReading()
        if preamble:
            upstream.backlog = preamble
            if not upstream.flush():
                return
        upstream.startReading()
        upstream.fill()

    def adopt(
        self, target: socket.socket, backlogs: Sequence[bytes], ended: Sequence[bool]
    ) -> None:
        """
        Start moving bytes on a pair whose directions carry state from
        before (see L{socketproxyd.stream.pump.Pump.adopt}).
        """
        self._join(target)
        for end in self.ends:
            end.backlog = backlogs[end.direction]
            end.ended = ended[end.direction]
        for end in self.ends:
            if not self.running:
                return
            if end.backlog and not end.flush():
                continue
            if not end.ended:
                end.startReading()

    def _join(self, sock: socket.socket) -> tuple[SpliceEnd, SpliceEnd]:
        """
        Make C{sock} the target's end, facing the client's, and start
        running.
        """
        upstream = self.upstream
        downstream = self.downstream = SpliceEnd(self, sock, DOWNSTREAM)
        upstream.peer = downstream
        downstream.peer = upstream
        if self.keepalive:
            for end in (upstream, downstream):
                if end.socket.family != socket.AF_UNIX:
                    end.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.running = True
        return upstream, downstream

    @property
    def ends(self) -> tuple[SpliceEnd, ...]:
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

    def allocatePipes(self) -> None:
        """
        Open the pipes of both directions together, if the sweeper allows
        it; otherwise (or if the system is out of fds, or the kernel made
        the pipes smaller than asked and than the copy buffer, which would
        make splicing slower than copying) the connection keeps copying
        through the shared buffer, which needs no fd.
        """
        sweeper = self.sweeper
        if not sweeper.acquire(self):
            return
        sizes = []
        try:
            for end in self.ends:
                pipe = end.pipe = Pipe(sweeper.pipeSize)
                sizes.append(pipe.size)
        except OSError as e:
            self.releasePipes()
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.sweeper.outOfFds()
            return
        if min(sizes) < min(COPY_SIZE, sweeper.pipeSize):
            self.releasePipes()
            sweeper.tooSmall()

    def _stop(self) -> None:
        if self.running:
            self.running = False
            for end in self.ends:
                end.stopReading()
                end.stopWriting()
            if self in self.sweeper.holders:
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

    def shutdownWrite(self, direction: int) -> None:
        end = self.upstream if direction == UPSTREAM else self.downstream
        assert end is not None, "the target's end is shut only once attached"
        end.shutWhenFlushed()

    def lost(self, end: SpliceEnd, reason: Failure) -> None:
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
                end.sourceEnded()
            return
        self.connection.failed()
