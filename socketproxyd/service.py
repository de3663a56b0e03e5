# -*- test-case-name: tests.test_service -*-
"""
L{ProxyService}: the listeners, the connection limit, the idle exit and the
stop of the whole proxy.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from .acceptor import Acceptor, adoptable
from .activation import InheritedSocket, adopt
from .addresses import describeAddress
from .connection import Connection, Ending
from .fdlimit import FDS_PER_CONNECTION, FdBudget, openDescriptors
from .logs import observer
from .notify import Notifier
from .proxy import ProxyFactory, ProxySettings
from .target import Target
from .timespan import formatTimespan


class StartupError(Exception):
    """
    The proxy cannot start; the message says why and what to do.
    """


def stopOnSignals(reactor: object) -> None:
    """
    Stop the reactor on SIGTERM and SIGINT, so that a graceful stop exits
    0 under every runner.

    Twisted's own handlers make twistd and twist re-raise the signal once
    the reactor has stopped, so the process would die of it; the contract
    is exit status 0 after a graceful stop, as the C{socketproxyd} command
    has. Installed once the reactor runs, after Twisted's.
    """

    def stop(signum: int, frame: object) -> None:
        reactor.callFromThread(reactor.stop)

    def install() -> None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    reactor.callWhenRunning(install)


class ProxyService(Service):
    """
    Serves every listener with one L{ProxyFactory}, accepting at most
    C{connectionsMax} clients at a time (fewer if the fd limit cannot hold
    that many), and stops the reactor after C{exitIdleTime} without any
    connection.

    @ivar capacity: how many connections are served at once.
    """

    log = Logger(observer=observer)
    statusInterval = 0.5
    limitLogInterval = 60.0
    exhaustionBackoff = 1.0

    def __init__(
        self,
        reactor: object,
        target: Target,
        settings: ProxySettings,
        connectionsMax: int = 256,
        exitIdleTime: float = math.inf,
        drainTimeout: float = 0.0,
        notifier: Notifier | None = None,
        fdLimit: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.connectionsMax = connectionsMax
        self.capacity = connectionsMax
        self.fdLimit = fdLimit
        self.budget = FdBudget()
        self.budget.onReleased = self._updateAccepting
        self.notifier = notifier if notifier is not None else Notifier(reactor, {})
        self.exitIdleTime = exitIdleTime
        self.drainTimeout = drainTimeout
        self.factory = ProxyFactory(reactor, target, settings, self, self.budget)
        self.ports: list[IListeningPort] = []
        self.acceptors: list[Acceptor | IListeningPort] = []
        self.connections: set[Connection] = set()
        self._accepting = True
        self._exhausted = False
        self._limitHits = 0
        self._limitLogged = -math.inf
        self._exhaustionLogged = -math.inf
        self._exhaustionSaid = False
        self._waiting: list[Connection] = []
        self._idleTimer = None
        self._statusCall = None
        self._backoffCall = None
        self._drained: Deferred | None = None

    def adoptInherited(self, inherited: Sequence[InheritedSocket]) -> None:
        """
        Serve the sockets passed in by the launcher.
        """
        for socket in inherited:
            port = adopt(self.reactor, socket, self.factory)
            self._addPort(port, socket.describe())

    def listen(self, descriptions: Sequence[str]) -> None:
        """
        Serve Twisted server endpoint descriptions as well (C{--listen}).

        @raise StartupError: when a description is malformed or cannot bind.
        """
        for description in descriptions:
            try:
                endpoint = serverFromString(self.reactor, description)
            except (ValueError, KeyError, TypeError) as e:
                raise StartupError(
                    f"--listen={description}: not a server endpoint ({e}); "
                    f"use e.g. tcp:8080:interface=127.0.0.1 or unix:/run/app.sock"
                ) from None
            outcome: list[object] = []
            endpoint.listen(self.factory).addBoth(outcome.append)
            if not outcome:
                raise StartupError(f"--listen={description}: did not bind at once")
            if isinstance(outcome[0], Failure):
                reason = outcome[0].getErrorMessage()
                raise StartupError(f"--listen={description}: cannot listen: {reason}")
            self._addPort(outcome[0], description)

    def _addPort(self, port: IListeningPort, label: str) -> None:
        self.ports.append(port)
        if adoptable(port, self.factory):
            acceptor = Acceptor(self.reactor, port, self, self.factory.accepted)
            acceptor.startReading()
            self.acceptors.append(acceptor)
        else:
            self.acceptors.append(port)
        self.log.info(
            "Listening on {address} ({label})",
            address=describeAddress(port.getHost()),
            label=label,
        )

    def room(self) -> int:
        """
        How many more clients may be accepted now: free connection slots,
        as far as the descriptors under the soft RLIMIT_NOFILE in force
        now hold them.
        """
        self.budget.refresh()
        return int(min(self.capacity - len(self.connections), self.budget.connections()))

    def startService(self) -> None:
        if not self.ports:
            raise StartupError("no listening socket")
        super().startService()
        if self.fdLimit is not None:
            self.budget.free = FdBudget.forLimit(self.fdLimit, openDescriptors()).free
            fits = int(min(self.budget.connections(), self.connectionsMax))
            if fits < self.connectionsMax:
                self.capacity = fits
                self.log.warn(
                    "RLIMIT_NOFILE={limit} holds {fits} connections, not {wanted}: "
                    "serving at most {fits} at once (raise LimitNOFILE= for more)",
                    limit=self.fdLimit,
                    fits=fits,
                    wanted=self.connectionsMax,
                )
        stopOnSignals(self.reactor)
        self.notifier.ready(self._status())
        self.notifier.startWatchdog()
        self._armIdleTimer()

    def _status(self) -> str:
        return f"{len(self.connections)} connections open (at most {self.capacity})"

    def _statusChanged(self) -> None:
        if self._statusCall is None and self.notifier.address is not None:
            self._statusCall = self.reactor.callLater(self.statusInterval, self._sendStatus)

    def _sendStatus(self) -> None:
        self._statusCall = None
        self.notifier.status(self._status())

    def _updateAccepting(self) -> None:
        full = len(self.connections) >= self.capacity
        if self.running and not full and not self._exhausted and self.room() == 0:
            self.fdsExhausted()
            return
        accepting = self.running and not self._exhausted and not full
        if accepting == self._accepting:
            return
        self._accepting = accepting
        for acceptor in self.acceptors:
            if accepting:
                acceptor.startReading()
            else:
                acceptor.stopReading()
        if full and self.running:
            self._limitHits += 1
            now = self.reactor.seconds()
            if now - self._limitLogged >= self.limitLogInterval:
                self.log.info(
                    "Reached {limit} connections ({hits} times since the last report); "
                    "new clients wait in the backlog",
                    limit=self.capacity,
                    hits=self._limitHits,
                )
                self._limitLogged = now
                self._limitHits = 0

    def connectionOpened(self, connection: Connection) -> None:
        """
        Count a new connection; at the limit, stop accepting.
        """
        self.connections.add(connection)
        self.budget.take(FDS_PER_CONNECTION)
        self._cancelIdleTimer()
        self._updateAccepting()
        self._statusChanged()

    def connectionClosed(self, connection: Connection) -> None:
        """
        Free a connection's slot; giving its fds back to the budget
        re-evaluates accepting.
        """
        if connection in self.connections:
            self.connections.discard(connection)
            self.budget.give(FDS_PER_CONNECTION)
        if self._exhausted:
            self._lookAgain()
        self._statusChanged()
        if not self.connections:
            self._fireDrained()
            self._armIdleTimer()

    def fdsExhausted(self) -> None:
        """
        The process or the system is out of file descriptors (an accept or
        a connect failed for want of one, or the soft limit in force leaves
        no room): stop accepting, so new clients wait in the backlog, and
        look again when a connection closes or after a back-off. The fd
        budget is counted afresh, since something it did not know of took
        descriptors. Said once per episode, and at most once a minute.
        """
        if self.fdLimit is not None:
            self.budget.recount(openDescriptors())
        if not self._exhausted:
            self._exhausted = True
            now = self.reactor.seconds()
            if now - self._exhaustionLogged >= self.limitLogInterval:
                self._exhaustionLogged = now
                self._exhaustionSaid = True
                self.log.warn(
                    "Out of file descriptors with {count} connections open (soft "
                    "RLIMIT_NOFILE={limit}): new clients wait in the backlog",
                    count=len(self.connections),
                    limit=self.budget.readLimit(),
                )
            self._updateAccepting()
        if self._backoffCall is None and self.running:
            self._backoffCall = self.reactor.callLater(self.exhaustionBackoff, self._lookAgain)

    def waitForDescriptors(self, connection: Connection) -> None:
        """
        C{connection} could not connect for want of descriptors: its client
        waits, and it tries again when descriptors are free.
        """
        self._waiting.append(connection)

    def _lookAgain(self) -> None:
        """
        Connect the connections that wait for descriptors, and accept again,
        if descriptors seem to be free; else wait once more.
        """
        if self._backoffCall is not None and self._backoffCall.active():
            self._backoffCall.cancel()
        self._backoffCall = None
        if not self._exhausted:
            return
        if self.room() == 0 and self.budget.free < 1:
            self.fdsExhausted()
            return
        self._exhausted = False
        waiting, self._waiting = self._waiting, []
        for connection in waiting:
            if not connection.closing:
                connection.connect()
        if self._exhausted:
            return
        self._updateAccepting()
        if self._exhaustionSaid and not self._exhausted:
            self._exhaustionSaid = False
            self.log.info("File descriptors available again; accepting")

    def _armIdleTimer(self) -> None:
        if self.running and not self.connections and not math.isinf(self.exitIdleTime):
            self._cancelIdleTimer()
            self._idleTimer = self.reactor.callLater(self.exitIdleTime, self._idleExit)

    def _cancelIdleTimer(self) -> None:
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None

    def _idleExit(self) -> None:
        self._idleTimer = None
        self.log.info(
            "No connection for {span}, exiting",
            span=formatTimespan(self.exitIdleTime),
        )
        self.reactor.stop()

    def stopService(self) -> Deferred:
        """
        Stop accepting at once; let open connections finish for up to the
        drain timeout, then close the rest.
        """
        super().stopService()
        self.notifier.stopping()
        self.notifier.stopWatchdog()
        self._cancelIdleTimer()
        for call in (self._statusCall, self._backoffCall):
            if call is not None and call.active():
                call.cancel()
        self._statusCall = self._backoffCall = None
        for acceptor in self.acceptors:
            acceptor.stopReading()
        stopped = DeferredList([d for d in (p.stopListening() for p in self.ports) if d])
        self.ports = []
        self.acceptors = []
        if not self.connections:
            return stopped
        self._drained = Deferred()
        drained = self._drained
        if self.drainTimeout > 0:
            self.log.info(
                "Stopping: waiting up to {span} for {count} connections",
                span=formatTimespan(self.drainTimeout),
                count=len(self.connections),
            )
            deadline = self.reactor.callLater(self.drainTimeout, self._closeAll)
            drained.addBoth(lambda result: deadline.active() and deadline.cancel())
        else:
            self._closeAll()
        return DeferredList([stopped, drained])

    def _closeAll(self) -> None:
        for connection in list(self.connections):
            connection.end(Ending.SHUTDOWN, reset=True)
        if not self.connections:
            self._fireDrained()

    def _fireDrained(self) -> None:
        if self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)
