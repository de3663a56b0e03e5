# -*- test-case-name: tests.unit.test_service -*-
"""
L{ListenerService}: the listening sockets and the connection limit.

It opens the listeners when it starts (the inherited sockets, then every
C{--listen} endpoint), accepts through an L{Acceptor} on each, counts the
proxy's connections, and stops accepting whenever one more would be over
C{--connections-max} or over what the descriptors under RLIMIT_NOFILE
hold: clients then wait in the kernel's backlog. Whatever else wants to
follow the connections (the idle exit, STATUS, the drain) watches it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from socketproxyd.config.routes import Routes
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.events import Ending
from socketproxyd.logs import observer
from socketproxyd.notices import Notice
from socketproxyd.service.fdbudget import (
    FDS_PER_CONNECTION,
    FdBudget,
    openDescriptors,
    raiseSoftLimit,
)
from socketproxyd.service.opening import Listeners, StartupError, exitAtStartup
from socketproxyd.stream.connection import Connection
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.systemd.activation import ActivationError, InheritedSocket


class ConnectionWatcher(Protocol):
    """
    Follows how many connections are open.
    """

    def connectionsChanged(self, count: int) -> None: ...


class ListenerService(Service):
    """
    The listeners and the limit (see the module docstring); the tracker of
    every connection its L{ProxyFactory} makes.

    @ivar capacity: how many connections are served at once.
    @ivar watchers: told each time the number of connections changes.
    """

    log = Logger(observer=observer)
    limitLogInterval = 60.0
    exhaustionBackoff = 1.0

    def __init__(
        self,
        reactor: object,
        routes: Routes | Target,
        settings: ProxySettings,
        connectionsMax: int = 256,
        findInherited: Callable[[], Sequence[InheritedSocket]] = list,
        listen: Sequence[str] = (),
        limitsDescriptors: bool = False,
    ) -> None:
        self.reactor = reactor
        self.connectionsMax = connectionsMax
        self.capacity = connectionsMax
        self.findInherited = findInherited
        self.descriptions = listen
        self.limitsDescriptors = limitsDescriptors
        self.budget = FdBudget()
        self.budget.onReleased = self._released
        sweeper = PipeSweeper(reactor, self.budget, self.fdsExhausted, settings.pipeSize)
        routes = routes if isinstance(routes, Routes) else Routes(routes)
        self.listening = Listeners(reactor, routes, settings, self, sweeper)
        self.watchers: list[ConnectionWatcher] = []
        self.connections: set[Connection] = set()
        self._opened = False
        self._accepting = True
        self._exhausted = False
        self._limitNotice = Notice(reactor, self.limitLogInterval)
        self._exhaustionNotice = Notice(reactor, self.limitLogInterval)
        self._waiting: list[Connection] = []
        self._backoffCall = None

    def privilegedStartService(self) -> None:
        """
        Open the listeners (binding a low port may need privileges).

        @raise SystemExit: after one line saying what is wrong, when a
            listener cannot be opened (L{exitAtStartup}).
        """
        super().privilegedStartService()
        self.open()

    def startService(self) -> None:
        self.open()
        super().startService()
        self._updateAccepting()

    def open(self) -> None:
        """
        Open every listener, once; size the limit to the descriptors.
        """
        if self._opened:
            return
        self._opened = True
        try:
            self.listening.open(self.findInherited(), self.descriptions)
        except (ActivationError, StartupError) as e:
            exitAtStartup(str(e))
        self._accepting = False
        if self.limitsDescriptors:
            self._sizeToDescriptors(raiseSoftLimit())

    def _sizeToDescriptors(self, softLimit: int) -> None:
        counted = FdBudget.forLimit(softLimit, openDescriptors())
        self.budget.free, self.budget.limit = counted.free, counted.limit
        fits = int(min(self.budget.connections(), self.connectionsMax))
        if fits < self.connectionsMax:
            self.capacity = fits
            self.log.warn(
                "RLIMIT_NOFILE={limit} holds {fits} connections, not {wanted}: "
                "serving at most {fits} at once (raise LimitNOFILE= for more)",
                limit=softLimit,
                fits=fits,
                wanted=self.connectionsMax,
            )

    def room(self) -> int:
        """
        How many more clients may be accepted now: free connection slots,
        as far as the descriptors under the soft RLIMIT_NOFILE in force
        now hold them.
        """
        self.budget.refresh()
        return int(min(self.capacity - len(self.connections), self.budget.connections()))

    def _updateAccepting(self) -> None:
        full = len(self.connections) >= self.capacity
        if self.running and not full and not self._exhausted and self.budget.connections() < 1:
            self.fdsExhausted()
            return
        accepting = self.running and not self._exhausted and not full
        if accepting == self._accepting:
            return
        self._accepting = accepting
        self.listening.accept(accepting)
        if full and self.running and (hits := self._limitNotice.begins()):
            self.log.info(
                "Connection limit {limit} reached{again}; new clients wait in the backlog",
                limit=self.capacity,
                hits=hits,
                again=f" {hits} times since the last report" if hits > 1 else "",
            )

    def _released(self) -> None:
        """
        Descriptors were given back: accept again if that was what stopped
        it (while accepting, freeing cannot change anything).
        """
        if not self._accepting:
            self._updateAccepting()

    def _changed(self) -> None:
        count = len(self.connections)
        for watcher in self.watchers:
            watcher.connectionsChanged(count)

    def connectionOpened(self, connection: Connection) -> None:
        """
        Count a new connection; at the limit, stop accepting.
        """
        connections = self.connections
        connections.add(connection)
        budget = self.budget
        budget.take(FDS_PER_CONNECTION)
        if len(connections) >= self.capacity or budget.free < FDS_PER_CONNECTION:
            self._updateAccepting()
        if self.watchers:
            self._changed()

    def connectionClosed(self, connection: Connection) -> None:
        """
        Free a connection's slot; giving its fds back to the budget
        re-evaluates accepting.
        """
        if connection in self.connections:
            self.connections.discard(connection)
            self.budget.give(FDS_PER_CONNECTION)
        if self._exhausted or self._waiting:
            self._lookAgain()
        if self.watchers:
            self._changed()

    def fdsExhausted(self) -> None:
        """
        The process or the system is out of file descriptors (an accept or
        a connect failed for want of one, or the soft limit in force leaves
        no room): stop accepting, so new clients wait in the backlog, and
        look again when a connection closes or after a back-off. The fd
        budget is counted afresh, since something it did not know of took
        descriptors. Said once per episode, and at most once a minute.
        """
        if len(self.connections) >= self.capacity:
            self._updateAccepting()
            return
        if self.limitsDescriptors:
            self.budget.recount(openDescriptors())
        if not self._exhausted:
            self._exhausted = True
            if self._exhaustionNotice.begins():
                self.log.warn(
                    "Out of file descriptors with {count} connections open (soft "
                    "RLIMIT_NOFILE={limit}): new clients wait in the backlog",
                    count=len(self.connections),
                    limit=self.budget.readLimit(),
                )
            self._updateAccepting()
        self._lookAgainLater()

    def waitForDescriptors(self, connection: Connection) -> None:
        """
        C{connection} could not connect for want of descriptors: its client
        waits, and it tries again when descriptors are free.
        """
        self._waiting.append(connection)
        self._lookAgainLater()

    def _lookAgainLater(self) -> None:
        if self._backoffCall is None and self.running:
            self._backoffCall = self.reactor.callLater(self.exhaustionBackoff, self._lookAgain)

    def _lookAgain(self) -> None:
        """
        Connect the connections that wait for descriptors, and accept again,
        if descriptors seem to be free; else wait once more.
        """
        if self._backoffCall is not None and self._backoffCall.active():
            self._backoffCall.cancel()
        self._backoffCall = None
        if not (self._exhausted or self._waiting):
            return
        self.budget.refresh()
        if self.budget.free < 1:
            self.fdsExhausted()
            self._lookAgainLater()
            return
        self._exhausted = False
        waiting, self._waiting = self._waiting, []
        for connection in waiting:
            if not connection.closing:
                connection.connect()
        if self._exhausted:
            return
        self._updateAccepting()
        if not self._exhausted and self._exhaustionNotice.ends():
            self.log.info("File descriptors available again; accepting")

    def countsByRoute(self) -> Counter[str]:
        """
        How many connections are open per named listener.
        """
        return Counter(c.factory.route for c in self.connections if c.factory.route is not None)

    def closeAll(self) -> None:
        """
        Close every open connection at once, with a reset.
        """
        for connection in list(self.connections):
            connection.end(Ending.SHUTDOWN, reset=True)

    def stopService(self) -> Deferred:
        """
        Stop accepting and close the listeners; open connections go on.
        """
        super().stopService()
        if self._backoffCall is not None and self._backoffCall.active():
            self._backoffCall.cancel()
        self._backoffCall = None
        return self.listening.close()
