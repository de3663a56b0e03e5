# -*- test-case-name: tests.unit.test_connection_pumps -*-
"""
One proxied connection, from accept to close: the one place that owns a
connection's behaviour, whichever data path moves its bytes. Its opening
and closing are reported to the route's L{socketproxyd.events.Tracker}.

A L{Connection} connects to the target (bounded by the connect timeout),
hands both sides to its pump, and from then on only hears what the pump
reports and tells it what to do:

    pump reports                      connection decides
    ------------------------------    --------------------------------------
    moved(direction, count)           byte counts, idle timer
    readEnded(direction)              -> pump.shutdownWrite(direction)
    writeShut(direction)              both shut -> pump.close()
    failed()                          -> pump.abort() (resets both sides)
    closed()                          tracker.closed(connection)

A direction (L{UPSTREAM}: client to target, L{DOWNSTREAM}: target to
client) is L{Flow.OPEN}, then L{Flow.ENDED} once its source sent its end of
stream, then L{Flow.SHUT} once what was in flight is out and the
destination's write side is shut down. Half-close is nothing more than
that; a reset anywhere aborts both sides; the connection ends once both
directions are shut, or at once on a reset, a timeout or a shutdown, and
says how in a fixed L{Ending}.

Pumps (L{socketproxyd.stream.pump.Pump}, where L{Flow} lives too) are
L{socketproxyd.stream.transportpump.TransportPump} (Twisted transports) and
L{socketproxyd.stream.splice.pump.SplicePump} (splice(2) on bare sockets).
"""

from __future__ import annotations

import errno
import math
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from socketproxyd.addresses import describeAddress, hostAddress
from socketproxyd.config.target import notReady
from socketproxyd.config.timespan import formatTimespan
from socketproxyd.events import DOWNSTREAM, UPSTREAM, Ending, cancelled, stillIdle
from socketproxyd.logs import observer
from socketproxyd.proxyheader import HEADERS
from socketproxyd.stream.pump import Flow, Pump

if TYPE_CHECKING:
    import socket

    from twisted.internet.protocol import Protocol

    from socketproxyd.proxyheader import ReceivedHeader
    from socketproxyd.stream.earlyrelay import EarlyPair
    from socketproxyd.stream.factory import ProxyFactory
    from socketproxyd.stream.headerreader import HeaderReader


class Closing(IntEnum):
    """
    How far a connection is in closing: a reset goes further than a
    normal close, and may follow one.
    """

    OPEN = 0
    CLOSING = 1
    ABORTING = 2


_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
RETRY_FIRST = 0.01
RETRY_MOST = 1.0
HEADER_TIMEOUT = 30.0
"""
How long a client has for its PROXY header when neither the connect
timeout nor the idle timeout is finite.
"""


class Connection:
    """
    The state machine of one proxied connection (see the module docstring).

    @ivar server: the L{ProxyFactory}: reactor, settings, target and the
        tracker that counts connections.
    @ivar pump: the data path.
    @ivar peer: the client's address, or C{None} when nothing needs it.
    @ivar host: the address the client connected to, likewise.
    @ivar counts: bytes moved, indexed by direction.
    @ivar datagrams: C{None}: a stream moves no datagrams.
    @ivar flows: each direction's L{Flow}.
    @ivar ending: how the connection ends, once that is decided.
    @ivar lastMoved: when a byte last moved, if an idle timeout is set.
    """

    datagrams = None

    __slots__ = (
        "server", "pump", "peer", "host", "started", "connected", "counts", "flows",
        "ending", "closing", "connecting", "timer", "lastMoved", "retrying", "header",
    )  # fmt: skip

    log = Logger(observer=observer)

    def __init__(
        self,
        server: ProxyFactory,
        pump: Pump,
        peer: IAddress | None = None,
        host: IAddress | None = None,
    ) -> None:
        self.server = server
        self.pump = pump
        pump.connection = self
        self.peer = peer
        self.host = host
        self.started = server.reactor.seconds() if server.recordsTimes else 0.0
        self.connected = 0.0
        self.counts = [0, 0]
        self.flows = [Flow.OPEN, Flow.OPEN]
        self.ending: Ending | None = None
        self.closing = Closing.OPEN
        self.connecting: Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.lastMoved: float | None = None
        self.retrying: tuple[float, float] | None = None
        self.header: HeaderReader | None = None

    def start(self) -> None:
        """
        Count the connection and connect to the target.
        """
        self.server.tracker.opened(self)
        self.connect()

    def awaitHeader(self, reader: HeaderReader) -> None:
        """
        Count the connection, read the PROXY header its client must send
        first (within L{_headerTimeout}), take the client's addresses
        from it, then connect to the target.
        """
        self.server.tracker.opened(self)
        self.header = reader
        self.timer = self.server.reactor.callLater(self._headerTimeout(), self._headerTimedOut)
        reader.start(self._headerReceived, self._headerRefused)

    def _headerTimeout(self) -> float:
        """
        How long a client has to send its PROXY header: the connect
        timeout; where that is infinite the idle timeout, and where both
        are, L{HEADER_TIMEOUT} (a silent client would otherwise hold its
        place under C{-c} for good).
        """
        settings = self.server.settings
        for timeout in (settings.connectTimeout, settings.idleTimeout):
            if not math.isinf(timeout):
                return timeout
        return HEADER_TIMEOUT

    def _headerReceived(self, header: ReceivedHeader) -> None:
        self.header = None
        cancelled(self.timer)
        self.timer = None
        if header.source is not None and header.destination is not None:
            self.peer = hostAddress(*header.source)
            self.host = hostAddress(*header.destination)
        self.server.headerAccepted()
        self.connect()

    def _headerRefused(self, why: str) -> None:
        self.server.headerRefused(self.peer or self.pump.clientAddress(), why)
        self.end(Ending.BAD_HEADER)

    def _headerTimedOut(self) -> None:
        self.timer = None
        self._headerRefused(f"none complete within {formatTimespan(self._headerTimeout())}")

    def connect(self) -> None:
        """
        Try to connect to the target, within the connect timeout (which
        runs from the first try, or from this one after a target that was
        not ready).
        """
        server = self.server
        attempt = server.connectTarget(self.pump.takesSockets, self.peer)
        if not isinstance(attempt, Deferred):
            self._connected(attempt)
            return
        self.connecting = attempt
        timeout = server.settings.connectTimeout
        if self.timer is None and not math.isinf(timeout):
            self.timer = server.reactor.callLater(timeout, self._connectTimedOut)
        attempt.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, target: socket.socket | Protocol) -> None:
        self.connecting = None
        now = self.server.reactor.seconds()
        if self.server.recordsTimes:
            self.connected = now
        cancelled(self.timer)
        self.timer = None
        if self.retrying is not None:
            self.retrying = None
            self.server.targetReady()
        settings = self.server.settings
        preamble = b""
        if settings.proxyProtocol is not None:
            preamble = HEADERS[settings.proxyProtocol](self.peer, self.host)
        self._watchIdle(now)
        self.pump.attach(target, preamble)

    def adopt(self, pair: EarlyPair) -> None:
        """
        Take over a client the early relay began to serve while Twisted
        loaded (L{socketproxyd.stream.earlyrelay}), counted from its
        accept. One it connected goes on from where it is: the bytes it
        moved, what it read and has not sent (sent first), and each end of
        stream or failure it saw, reported here as a pump reports them, so
        that the rules are this class's alone. One it did not connect is
        connected now, as any accepted client.
        """
        if self.server.recordsTimes:
            self.started = pair.accepted
        _, target = pair.sockets()
        if target is None:
            self.start()
            return
        self.server.tracker.opened(self)
        if self.server.recordsTimes:
            self.connected = pair.connected
        for direction, state in enumerate(pair.directions):
            self.counts[direction] += state.count
        self._watchIdle(pair.lastMoved)
        self.pump.adopt(
            target,
            tuple(state.backlog for state in pair.directions),
            tuple(state.ended for state in pair.directions),
        )
        if pair.failed:
            self.failed()
            return
        for direction, state in enumerate(pair.directions):
            if state.ended:
                self.readEnded(direction)

    def _watchIdle(self, since: float) -> None:
        """
        With an idle timeout, close the connection once no byte has moved
        for that long, counting from C{since}.
        """
        idleTimeout = self.server.settings.idleTimeout
        if math.isinf(idleTimeout):
            return
        reactor = self.server.reactor
        self.lastMoved = since
        delay = max(0.0, since + idleTimeout - reactor.seconds())
        self.timer = reactor.callLater(delay, self._idleCheck)

    def _connectTimedOut(self) -> None:
        self.timer = None
        self.ending = Ending.CONNECT_TIMEOUT
        if self.connecting is None:
            self._connectFailed(Failure(error.TimeoutError()))
        else:
            self.connecting.cancel()

    def _connectFailed(self, reason: Failure) -> None:
        self.connecting = None
        if (
            self.ending is None
            and isinstance(reason.value, error.ConnectError)
            and reason.value.osError in _OUT_OF_FDS
        ):
            tracker = self.server.tracker
            tracker.fdsExhausted()
            tracker.waitForDescriptors(self.connectAgain)
            return
        cancelled(self.timer)
        self.timer = None
        if self.ending is None and self._retryLater(reason):
            return
        if isinstance(reason.value, error.TimeoutError):
            self.ending = Ending.CONNECT_TIMEOUT
        if self.ending is Ending.CONNECT_TIMEOUT:
            why = f"no answer within {formatTimespan(self.server.settings.connectTimeout)}"
        elif self.ending is None:
            self.ending = Ending.CONNECT_FAILED
            why = reason.getErrorMessage()
        else:
            return
        self.log.warn(
            "{route}Failed to connect to {target} for {peer}: {why}",
            route=self.server.routePrefix,
            target=str(self.server.target),
            peer=describeAddress(self.peer if self.peer is not None else self.pump.clientAddress()),
            why=why,
        )
        self.end(self.ending)

    def _retryLater(self, reason: Failure) -> bool:
        """
        Whether the target, not ready (refusing, or its UNIX socket not
        there yet), is tried again after a back-off: while
        C{--connect-retry} after the first failure allows, the delay
        growing from L{RETRY_FIRST} to L{RETRY_MOST}.
        """
        span = self.server.settings.connectRetry
        if not span or reason.value is None or not notReady(reason.value):
            return False
        now = self.server.reactor.seconds()
        if self.retrying is None:
            deadline, delay = now + span, RETRY_FIRST
            self.server.targetNotReady(reason.getErrorMessage())
        else:
            deadline, delay = self.retrying
        if now >= deadline:
            self.retrying = None
            self.server.targetGivenUp()
            return False
        self.retrying = (deadline, min(delay * 2, RETRY_MOST))
        self.server.connectRetries += 1
        self.timer = self.server.reactor.callLater(min(delay, deadline - now), self._retry)
        return True

    def _retry(self) -> None:
        self.timer = None
        self.connect()

    def moved(self, direction: int, count: int) -> None:
        """
        C{count} bytes went C{direction}.
        """
        self.counts[direction] += count
        if self.lastMoved is not None:
            self.lastMoved = self.server.reactor.seconds()

    def readEnded(self, direction: int) -> None:
        """
        C{direction}'s source sent its end of stream: forward it.
        """
        if self.flows[direction] is not Flow.OPEN or self.closing:
            return
        self.flows[direction] = Flow.ENDED
        self.pump.shutdownWrite(direction)

    def writeShut(self, direction: int) -> None:
        """
        C{direction} is finished: its destination's write side is shut
        down. Once both are, the connection is done.
        """
        self.flows[direction] = Flow.SHUT
        if self.flows[UPSTREAM] is Flow.SHUT and self.flows[DOWNSTREAM] is Flow.SHUT:
            self.end(Ending.DONE)

    def failed(self) -> None:
        """
        A socket failed (a reset, a refused write): reset both sides.
        """
        self.end(Ending.RESET, reset=True)

    def end(self, how: Ending, reset: bool = False) -> None:
        """
        End the connection now, normally (bytes already handed to the
        kernel still go out) or with a reset; the first reason given is
        the one the close line names.
        """
        if self.ending is None:
            self.ending = how
        if self.retrying is not None:
            self.retrying = None
            self.server.targetGivenUp()
        closing = Closing.ABORTING if reset else Closing.CLOSING
        if self.closing >= closing:
            return
        self.closing = closing
        cancelled(self.timer)
        self.timer = None
        if self.header is not None:
            self.header.stop()
            self.header = None
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        if reset:
            self.pump.abort()
        else:
            self.pump.close()

    def _idleCheck(self) -> None:
        server = self.server
        assert self.lastMoved is not None, "an idle timer runs only with an idle timeout"
        due = self.lastMoved + server.settings.idleTimeout
        self.timer = stillIdle(server.reactor, due, self._idleCheck)
        if self.timer is None:
            self.end(Ending.IDLE_TIMEOUT)

    def closed(self) -> None:
        """
        The pump closed both sides: the connection is over.
        """
        cancelled(self.timer)
        self.timer = None
        if self.ending is None:
            self.ending = Ending.DONE
        self.server.tracker.closed(self)

    def connectAgain(self) -> None:
        """
        Descriptors are free again after a connect failed for want of
        them: try again, unless the connection ended meanwhile.
        """
        if not self.closing:
            self.connect()

    def shutdown(self) -> None:
        """
        The proxy stops: reset both sides now.
        """
        self.end(Ending.SHUTDOWN, reset=True)

    def addresses(self) -> tuple[IAddress, IAddress] | None:
        """
        The address the client connected to and the client's, when the
        route records them.
        """
        if not self.server.recordsAddresses or self.host is None or self.peer is None:
            return None
        return self.host, self.peer
