# -*- test-case-name: tests.unit.test_service -*-
"""
L{ProxyService}: the whole proxy as Twisted applications compose one, a
L{MultiService} of small services with one job each: the listeners and the
limit (L{ListenerService}), the idle exit (L{IdleExitService}), the drain
on stop (L{DrainService}) and sd_notify (L{StatusService}).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from socketproxyd.config.routes import Routes
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.config.timespan import formatTimespan
from socketproxyd.logs import observer, runnerObserver
from socketproxyd.service.listeners import ListenerService
from socketproxyd.systemd.activation import InheritedSocket
from socketproxyd.systemd.notify import Notifier


def installSignalHandlers(reactor: object, log: Logger) -> None:
    """
    Once the reactor runs (after Twisted installs its own handlers): stop
    on SIGTERM and SIGINT, and log and otherwise ignore SIGHUP.

    Twisted's handlers make twistd and twist re-raise the signal that
    stopped the reactor, so the process would die of it; the contract is
    exit status 0 after a graceful stop, under every runner. There is
    nothing to reload on SIGHUP, and dying of it (as the original does)
    would drop every connection.
    """

    def stop(signum: int, frame: object) -> None:
        reactor.callFromThread(reactor.stop)

    def hangup(signum: int, frame: object) -> None:
        reactor.callFromThread(log.info, "SIGHUP ignored: there is no configuration to reload")

    def install() -> None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)

    reactor.callWhenRunning(install)


class IdleExitService(Service):
    """
    Stops the reactor once no connection has been open for C{exitIdleTime},
    counting from start-up too.
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: object, exitIdleTime: float) -> None:
        self.reactor = reactor
        self.exitIdleTime = exitIdleTime
        self._timer = None

    def startService(self) -> None:
        super().startService()
        self.connectionsChanged(0)

    def connectionsChanged(self, count: int) -> None:
        """
        Arm the timer when the last connection closed; disarm it otherwise.
        """
        self._cancel()
        if count == 0 and self.running and not math.isinf(self.exitIdleTime):
            self._timer = self.reactor.callLater(self.exitIdleTime, self._exit)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _exit(self) -> None:
        self._timer = None
        self.log.info("No connection for {span}, exiting", span=formatTimespan(self.exitIdleTime))
        self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        self._cancel()


class DrainService(Service):
    """
    On stop, lets the open connections finish for up to C{drainTimeout},
    then closes the rest (at once when it is 0, as the original does).
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: object, listeners: ListenerService, drainTimeout: float) -> None:
        self.reactor = reactor
        self.listeners = listeners
        self.drainTimeout = drainTimeout
        self._drained: Deferred | None = None

    def connectionsChanged(self, count: int) -> None:
        """
        The last connection closed: the drain is over.
        """
        if count == 0 and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def stopService(self) -> Deferred | None:
        super().stopService()
        self.listeners.listening.endSessions()
        count = len(self.listeners.connections)
        if not count:
            return None
        self._drained = drained = Deferred()
        self.listeners.watchers.append(self)
        if self.drainTimeout > 0:
            self.log.info(
                "Stopping: waiting up to {span} for {count} connections",
                span=formatTimespan(self.drainTimeout),
                count=count,
            )
            deadline = self.reactor.callLater(self.drainTimeout, self.listeners.closeAll)
            drained.addBoth(lambda result: deadline.active() and deadline.cancel())
        else:
            self.listeners.closeAll()
        return drained


class StatusService(Service):
    """
    Tells the service manager the proxy is ready, how many connections are
    open (at most every C{statusInterval}), that it is alive (the
    watchdog) and that it is stopping.
    """

    statusInterval = 0.5

    def __init__(self, reactor: object, notifier: Notifier, listeners: ListenerService) -> None:
        self.reactor = reactor
        self.notifier = notifier
        self.listeners = listeners
        self._call = None

    def _status(self) -> str:
        listeners = self.listeners
        count = len(listeners.connections)
        status = f"{count} connections open (at most {listeners.capacity}"
        if sessions := listeners.listening.sessions():
            status += f"; streams {count - sessions}, datagram sessions {sessions}"
        status += ")"
        routes = listeners.listening.routeNames()
        if routes:
            counts = listeners.countsByRoute()
            status += ": " + ", ".join(f"{route} {counts[route]}" for route in routes)
        return status

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        """
        READY=1 once the reactor runs, when clients are accepted and
        Twisted has opened its own descriptors.
        """
        if self.running:
            self.notifier.ready(self._status())
            self.notifier.startWatchdog()

    def connectionsChanged(self, count: int) -> None:
        """
        Send the new count soon, with whatever else changes meanwhile.
        """
        if self._call is None and self.running and self.notifier.address is not None:
            self._call = self.reactor.callLater(self.statusInterval, self._send)

    def _send(self) -> None:
        self._call = None
        self.notifier.status(self._status())

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.notifier.stopping()
        self.notifier.stopWatchdog()


class ProxyService(MultiService):
    """
    The whole proxy (see the module docstring). Only the services with
    something to do follow the connection count (an idle exit, a notify
    socket, a drain under way): it changes twice a connection.

    @ivar listeners: the L{ListenerService}, which tracks the connections.
    """

    def __init__(
        self,
        reactor: object,
        routes: Routes | Target,
        settings: ProxySettings,
        connectionsMax: int = 256,
        exitIdleTime: float = math.inf,
        drainTimeout: float = 0.0,
        notifier: Notifier | None = None,
        findInherited: Callable[[], Sequence[InheritedSocket]] = list,
        listen: Sequence[str] = (),
        limitsDescriptors: bool = False,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.listeners = ListenerService(
            reactor, routes, settings, connectionsMax, findInherited, listen, limitsDescriptors
        )
        notifier = notifier if notifier is not None else Notifier(reactor, {})
        drain = DrainService(reactor, self.listeners, drainTimeout)
        idleExit = IdleExitService(reactor, exitIdleTime)
        status = StatusService(reactor, notifier, self.listeners)
        for service in (self.listeners, drain, idleExit, status):
            service.setServiceParent(self)
        if not math.isinf(exitIdleTime):
            self.listeners.watchers.append(idleExit)
        if notifier.address is not None:
            self.listeners.watchers.append(status)

    def setServiceParent(self, parent: object) -> None:
        """
        Under twistd, which asks the application for an C{ILogObserver}
        component before it starts logging: when stderr is the journal,
        log as the console script does, with priorities and without
        twistd's timestamps (C{--logger} still wins).
        """
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            observer = runnerObserver()
            if observer is not None:
                parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        installSignalHandlers(self.reactor, self.listeners.log)
        super().startService()
