# -*- test-case-name: tests.unit.test_connection_pumps -*-
"""
One proxied connection, from accept to its close line: the one place that
owns a connection's behaviour, whichever data path moves its bytes.

A L{Connection} connects to the target (bounded by the connect timeout),
hands both sides to its pump, and from then on only hears what the pump
reports and tells it what to do:

    pump reports                      connection decides
    ------------------------------    --------------------------------------
    moved(direction, count)           byte counts, idle timer
    readEnded(direction)              -> pump.shutdownWrite(direction)
    writeShut(direction)              both shut -> pump.close()
    failed()                          -> pump.abort() (resets both sides)
    closed()                          the slot is free, the close line

A direction (L{UPSTREAM}: client to target, L{DOWNSTREAM}: target to
client) is L{Flow.OPEN}, then L{Flow.ENDED} once its source sent its end of
stream, then L{Flow.SHUT} once what was in flight is out and the
destination's write side is shut down. Half-close is nothing more than
that; a reset anywhere aborts both sides; the connection ends once both
directions are shut, or at once on a reset, a timeout or a shutdown, and
says how in a fixed L{Ending}.

Pumps (L{socketproxyd.stream.pump.Pump}, where L{Flow} and L{Ending} live too) are
L{socketproxyd.stream.transportpump.TransportPump} (Twisted transports) and
L{socketproxyd.stream.splice.pump.SplicePump} (splice(2) on bare sockets).
"""

from __future__ import annotations

import errno
import math
from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from socketproxyd.addresses import describeAddress
from socketproxyd.config.target import notReady
from socketproxyd.config.timespan import formatTimespan
from socketproxyd.events import DOWNSTREAM, UPSTREAM, Ending, stillIdle
from socketproxyd.logs import observer
from socketproxyd.proxyheader import HEADERS
from socketproxyd.stream.pump import Flow, Pump

if TYPE_CHECKING:
    from socketproxyd.stream.factory import ProxyFactory

_OPEN, _CLOSING, _ABORTING = range(3)
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
RETRY_FIRST = 0.01
RETRY_MOST = 1.0


class Connection:
    """
    The state machine of one proxied connection (see the module docstring).

    @ivar factory: the L{ProxyFactory}: reactor, settings, target and the
        tracker that counts connections.
    @ivar pump: the data path.
    @ivar peer: the client's address, or C{None} when nothing needs it.
    @ivar host: the address the client connected to, likewise.
    @ivar counts: bytes moved, indexed by direction.
    @ivar flows: each direction's L{Flow}.
    @ivar ending: how the connection ends, once that is decided.
    @ivar lastMoved: when a byte last moved, if an idle timeout is set.
    """

    __slots__ = (
        "factory", "pump", "peer", "host", "started", "counts", "flows",
        "ending", "closing", "connecting", "timer", "lastMoved", "retrying",
    )  # fmt: skip

    log = Logger(observer=observer)

    def __init__(
        self, factory: ProxyFactory, pump: Pump, peer: object = None, host: object = None
    ) -> None:
        self.factory = factory
        self.pump = pump
        pump.connection = self
        self.peer = peer
        self.host = host
        self.started = factory.reactor.seconds() if host is not None else 0.0
        self.counts = [0, 0]
        self.flows = [Flow.OPEN, Flow.OPEN]
        self.ending: Ending | None = None
        self.closing = _OPEN
        self.connecting: Deferred | None = None
        self.timer = None
        self.lastMoved: float | None = None
        self.retrying: tuple[float, float] | None = None

    def start(self) -> None:
        """
        Count the connection and connect to the target.
        """
        self.factory.tracker.connectionOpened(self)
        self.connect()

    def connect(self) -> None:
        """
        Try to connect to the target, within the connect timeout (which
        runs from the first try, or from this one after a target that was
        not ready).
        """
        factory = self.factory
        attempt = factory.connectTarget(self.pump.takesSockets)
        if not isinstance(attempt, Deferred):
            self._connected(attempt)
            return
        self.connecting = attempt
        timeout = factory.settings.connectTimeout
        if self.timer is None and not math.isinf(timeout):
            self.timer = factory.reactor.callLater(timeout, self._connectTimedOut)
        attempt.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, target: object) -> None:
        self.connecting = None
        self._cancelTimer()
        if self.retrying is not None:
            self.retrying = None
            self.factory.targetReady()
        settings = self.factory.settings
        preamble = b""
        if settings.proxyProtocol is not None:
            preamble = HEADERS[settings.proxyProtocol](self.peer, self.host)
        if not math.isinf(settings.idleTimeout):
            self.lastMoved = self.factory.reactor.seconds()
            self.timer = self.factory.reactor.callLater(settings.idleTimeout, self._idleCheck)
        self.pump.attach(target, preamble)

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
            self.factory.tracker.fdsExhausted()
            self.factory.tracker.waitForDescriptors(self)
            return
        self._cancelTimer()
        if self.ending is None and self._retryLater(reason):
            return
        if isinstance(reason.value, error.TimeoutError):
            self.ending = Ending.CONNECT_TIMEOUT
        if self.ending is Ending.CONNECT_TIMEOUT:
            why = f"no answer within {formatTimespan(self.factory.settings.connectTimeout)}"
        elif self.ending is None:
            self.ending = Ending.CONNECT_FAILED
            why = reason.getErrorMessage()
        else:
            return
        self.log.warn(
            "{route}Failed to connect to {target} for {peer}: {why}",
            route=self.factory.routePrefix,
            target=str(self.factory.target),
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
        span = self.factory.settings.connectRetry
        if not span or not notReady(reason.value):
            return False
        now = self.factory.reactor.seconds()
        if self.retrying is None:
            deadline, delay = now + span, RETRY_FIRST
            self.factory.targetNotReady(reason.getErrorMessage())
        else:
            deadline, delay = self.retrying
        if now >= deadline:
            self.retrying = None
            self.factory.targetGivenUp()
            return False
        self.retrying = (deadline, min(delay * 2, RETRY_MOST))
        self.timer = self.factory.reactor.callLater(min(delay, deadline - now), self._retry)
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
            self.lastMoved = self.factory.reactor.seconds()

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
            self.factory.targetGivenUp()
        closing = _ABORTING if reset else _CLOSING
        if self.closing >= closing:
            return
        self.closing = closing
        self._cancelTimer()
        if self.connecting is not None:
            connecting, self.connecting = self.connecting, None
            connecting.cancel()
        if reset:
            self.pump.abort()
        else:
            self.pump.close()

    def _idleCheck(self) -> None:
        factory = self.factory
        due = self.lastMoved + factory.settings.idleTimeout
        self.timer = stillIdle(factory.reactor, due, self._idleCheck)
        if self.timer is None:
            self.end(Ending.IDLE_TIMEOUT)

    def _cancelTimer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def closed(self) -> None:
        """
        The pump closed both sides: free the slot and log the close line.
        """
        self._cancelTimer()
        if self.ending is None:
            self.ending = Ending.DONE
        factory = self.factory
        factory.tracker.connectionClosed(self)
        if self.host is None:
            return
        self.log.debug(
            "{route}{listener} {peer} -> {target}: {up} bytes up, {down} bytes down, "
            "{duration:.3f}s, {how}",
            route=factory.routePrefix,
            listener=describeAddress(self.host),
            peer=describeAddress(self.peer),
            target=str(factory.target),
            up=self.counts[UPSTREAM],
            down=self.counts[DOWNSTREAM],
            duration=factory.reactor.seconds() - self.started,
            how=self.ending.value,
        )
