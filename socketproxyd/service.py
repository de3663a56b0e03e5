# -*- test-case-name: tests.test_service -*-
"""
L{ProxyService}: the listeners, the connection limit, the idle exit and the
stop of the whole proxy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from .activation import InheritedSocket, adopt
from .logs import observer
from .proxy import ProxyFactory, ProxySettings, ServerProtocol, describeAddress
from .target import Target
from .timespan import formatTimespan


class StartupError(Exception):
    """
    The proxy cannot start; the message says why and what to do.
    """


def gateAccepts(port: IListeningPort, freeSlots: Callable[[], int]) -> None:
    """
    Make C{port} accept no more clients in one wake-up than there are free
    connection slots.

    Twisted's ports accept up to C{numberAccepts} clients per wake-up, which
    would overshoot the limit; clamping it before each wake-up keeps the
    limit exact, and clients over it stay in the kernel's backlog.
    """
    doRead = port.doRead

    def gatedDoRead() -> object:
        slots = freeSlots()
        if slots <= 0:
            return None
        port.numberAccepts = max(1, min(port.numberAccepts, slots))
        return doRead()

    port.doRead = gatedDoRead


class ProxyService(Service):
    """
    Serves every listener with one L{ProxyFactory}, accepting at most
    C{connectionsMax} clients at a time, and stops the reactor after
    C{exitIdleTime} without any connection.
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: object,
        target: Target,
        settings: ProxySettings,
        connectionsMax: int = 256,
        exitIdleTime: float = math.inf,
        drainTimeout: float = 0.0,
    ) -> None:
        self.reactor = reactor
        self.connectionsMax = connectionsMax
        self.exitIdleTime = exitIdleTime
        self.drainTimeout = drainTimeout
        self.factory = ProxyFactory(
            reactor, target, target.endpoint(reactor, settings.connectTimeout), settings, self
        )
        self.ports: list[IListeningPort] = []
        self.connections: set[ServerProtocol] = set()
        self._accepting = True
        self._idleTimer = None
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
        if hasattr(port, "numberAccepts"):
            gateAccepts(port, self._freeSlots)
        self.ports.append(port)
        self.log.info(
            "Listening on {address} ({label})",
            address=describeAddress(port.getHost()),
            label=label,
        )

    def _freeSlots(self) -> int:
        return self.connectionsMax - len(self.connections)

    def startService(self) -> None:
        if not self.ports:
            raise StartupError("no listening socket")
        super().startService()
        self._armIdleTimer()

    def connectionOpened(self, connection: ServerProtocol) -> None:
        """
        Count a new connection; at the limit, stop accepting.
        """
        self.connections.add(connection)
        self._cancelIdleTimer()
        if self._accepting and self._freeSlots() <= 0:
            self._accepting = False
            for port in self.ports:
                port.stopReading()
            self.log.info(
                "Reached {limit} connections; new clients wait in the backlog",
                limit=self.connectionsMax,
            )

    def connectionClosed(self, connection: ServerProtocol) -> None:
        """
        Free a connection's slot; below the limit, accept again.
        """
        self.connections.discard(connection)
        if not self._accepting and self.running and self._freeSlots() > 0:
            self._accepting = True
            for port in self.ports:
                port.startReading()
        if not self.connections:
            if self._drained is not None:
                drained, self._drained = self._drained, None
                drained.callback(None)
            self._armIdleTimer()

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
        self._cancelIdleTimer()
        stopped = DeferredList([d for d in (p.stopListening() for p in self.ports) if d])
        self.ports = []
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
            connection.abort("shutdown")
        if not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)
