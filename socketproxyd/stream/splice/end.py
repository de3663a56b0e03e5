# -*- test-case-name: tests.unit.test_splice_pump -*-
"""
One socket of a spliced connection and the direction that leaves by it:
how its bytes move, by copy through a shared buffer or by splice(2)
through a pipe, and the flow control between it and its peer.

A L{SpliceEnd} stands in the reactor for its socket. Its source is the
socket, its destination the peer end's socket; what was read but not yet
written is in flight, in its pipe (C{pending} bytes) or, before the
direction has a pipe, in C{backlog}. A direction whose destination cannot
take what is in flight stops reading its source until the destination is
writable again. What the bytes do to the connection is reported through
the owning L{socketproxyd.stream.splice.pump.SplicePump}.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from socketproxyd.stream.splice.pipes import Pipe

if TYPE_CHECKING:
    from socketproxyd.stream.splice.pump import SplicePump

ROUNDS = 8
COPY_ROUNDS = (1, 2)
"""
Reads per wake-up of the copy path, by direction: a server's end of stream
often comes with its last reply, a client's seldom with its request.
"""
COPY_SIZE = 64 * 1024
_copyBuffer = bytearray(COPY_SIZE)
_copyView = memoryview(_copyBuffer)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


@implementer(IReadWriteDescriptor)
class SpliceEnd:
    """
    One socket of a spliced connection, with the state of the direction
    its bytes leave by.

    @ivar fileno: the socket's own C{fileno} (the reactor asks for it on
        every registration and event; -1 once the socket is closed).
    @ivar direction: the direction this socket is the source of.
    @ivar ended: whether its source sent its end of stream.
    @ivar shutting: whether its destination is to be shut down once what
        is in flight is out.
    @ivar shut: whether it has been.
    @ivar reading: whether it is a reader in the reactor.
    @ivar writing: whether it is a writer in the reactor.
    """

    __slots__ = (
        "pump", "socket", "fileno", "direction", "peer", "pipe", "pending",
        "backlog", "ended", "shutting", "shut", "reading", "writing",
    )  # fmt: skip

    def __init__(self, pump: SplicePump, sock: socket.socket, direction: int) -> None:
        self.pump = pump
        self.socket = sock
        self.fileno = sock.fileno
        self.direction = direction
        self.peer: SpliceEnd
        self.pipe: Pipe | None = None
        self.pending = 0
        self.backlog = b""
        self.ended = False
        self.shutting = False
        self.shut = False
        self.reading = False
        self.writing = False

    def logPrefix(self) -> str:
        return "splice"

    def doRead(self) -> None:
        if self.pump.running:
            self.fill()

    def doWrite(self) -> None:
        if self.pump.running:
            self.peer.drain()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw a hang-up or an error, and took the socket out of
        its readers and writers.
        """
        self.reading = self.writing = False
        self.pump.lost(self, reason)

    def startReading(self) -> None:
        if not self.reading:
            self.reading = True
            self.pump.reactor.addReader(self)

    def stopReading(self) -> None:
        if self.reading:
            self.reading = False
            self.pump.reactor.removeReader(self)

    def startWriting(self) -> None:
        if not self.writing:
            self.writing = True
            self.pump.reactor.addWriter(self)

    def stopWriting(self) -> None:
        if self.writing:
            self.writing = False
            self.pump.reactor.removeWriter(self)

    def inFlight(self) -> bool:
        return bool(self.pending or self.backlog)

    def releasePipe(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None

    def fill(self) -> None:
        """
        The socket is readable: move what it has into the pipe and on to
        the peer, and again while the destination keeps up, until the
        source has nothing more (EAGAIN) or for at most L{ROUNDS} rounds.

        Only bulk transfers have a pipe, and their source has usually
        received more by the time a round is done: going on saves a return
        to the reactor, which costs more than the one C{EAGAIN} that ends
        the loop. Small messages, whose next read would be an C{EAGAIN},
        take the copy path, which stops after one read.
        """
        pipe = self.pipe
        if pipe is None:
            self.copy()
            return
        source = self.socket.fileno()
        total = 0
        for _ in range(ROUNDS):
            space = pipe.size - self.pending
            try:
                moved = os.splice(source, pipe.write, space, flags=_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self.pump.connection.failed()
                return
            if moved == 0:
                self.moved(total)
                self.sourceEnded()
                return
            self.pending += moved
            total += moved
            if not self.flush():
                break
        self.moved(total)

    def moved(self, count: int) -> None:
        pump = self.pump
        if count and pump.running:
            pump.active = True
            pump.connection.moved(self.direction, count)

    def copy(self) -> None:
        """
        A direction without a pipe reads into a shared buffer and sends from
        it: for the small messages of most connections that costs the same
        two system calls as splicing, without opening a pipe pair. A read
        that fills the buffer means bulk data: the connection opens its
        pipes and splices from then on.

        After a short reply is out, the target is read once more: a server
        that closes after its reply (HTTP with C{Connection: close}, most
        one-shot protocols) has usually sent its end of stream with it,
        and finding it now saves a whole reactor wake-up per connection,
        for one C{EAGAIN} where the connection stays open.
        """
        sock, peer = self.socket, self.peer.socket
        for _ in range(COPY_ROUNDS[self.direction]):
            try:
                moved = sock.recv_into(_copyBuffer)
            except BlockingIOError:
                return
            except OSError:
                self.pump.connection.failed()
                return
            if moved == 0:
                self.sourceEnded()
                return
            try:
                sent = peer.send(_copyView[:moved])
            except BlockingIOError:
                sent = 0
            except OSError:
                self.pump.connection.failed()
                return
            if sent < moved:
                self.backlog = bytes(_copyView[sent:moved])
                self.waitForDestination()
                self.moved(moved)
                return
            self.moved(moved)
            if moved == COPY_SIZE:
                self.pump.allocatePipes()
                return

    def sourceEnded(self) -> None:
        self.ended = True
        self.stopReading()
        self.pump.connection.readEnded(self.direction)

    def shutWhenFlushed(self) -> None:
        """
        The source has ended: shut the destination down once what is in
        flight is out.
        """
        self.shutting = True
        if not self.inFlight():
            self.shutDestination()

    def shutDestination(self) -> None:
        """
        The direction is finished: shut down writing on the peer (not for
        the second direction to finish: closing the sockets, the
        connection's next step, sends the same FIN).
        """
        self.shut = True
        if not self.peer.shut:
            try:
                self.peer.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.pump.connection.writeShut(self.direction)

    def waitForDestination(self) -> None:
        """
        Stop reading until the peer takes what is in flight: this is the
        flow control.
        """
        self.stopReading()
        self.peer.startWriting()

    def flush(self) -> bool:
        """
        Move what is in flight (backlog, then pipe) to the peer; stop
        reading while the peer cannot take it all. Whether all is out and
        the socket may be read again.
        """
        destination = self.peer
        try:
            if self.backlog:
                sent = destination.socket.send(self.backlog)
                self.backlog = self.backlog[sent:]
                if self.backlog:
                    raise BlockingIOError
            if self.pending:
                pipe = self.pipe
                assert pipe is not None, "bytes are pending only in a pipe"
                pipeOut, sink = pipe.read, destination.socket.fileno()
                while self.pending:
                    self.pending -= os.splice(pipeOut, sink, self.pending, flags=_FLAGS)
        except BlockingIOError:
            pass
        except OSError:
            self.pump.connection.failed()
            return False
        if self.pending or self.backlog:
            self.waitForDestination()
            return False
        if self.shutting:
            destination.stopWriting()
            self.shutDestination()
            return False
        return True

    def drain(self) -> None:
        """
        The peer became writable again: empty what is in flight into it,
        then read the socket again.
        """
        if self.flush():
            self.peer.stopWriting()
            if not self.ended:
                self.startReading()
