# -*- test-case-name: tests.unit.test_service -*-
"""
L{ProxyService}: the whole proxy as Twisted applications compose one, a
L{MultiService} of small services with one job each: the connection limit
(L{ConnectionLimit}), the listeners (L{ListenerService}), the drain on stop
(L{DrainService}), the idle exit (L{IdleExitService}) and sd_notify
(L{StatusService}).

Every connection and datagram session is reported to one L{Ledger}, which
passes each opened and closed event on to the consumers that have
something to do: the limit always, the close line at debug level, the idle
exit when there is one, STATUS when there is a notify socket, the drain
while one is under way.
"""

from __future__ import annotations

import math
import os
import signal
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from socketproxyd.config.routes import Routes
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.events import DOWNSTREAM, UPSTREAM
from socketproxyd.logs import observer, runnerObserver
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.closelog import CloseLog
from socketproxyd.service.drain import DrainService
from socketproxyd.service.idleexit import IdleExitService
from socketproxyd.service.ledger import Ledger
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.listeners import ListenerService
from socketproxyd.service.opening import StartupError, exitAtStartup
from socketproxyd.service.status import StatusService
from socketproxyd.systemd.activation import InheritedSocket
from socketproxyd.systemd.notify import Notifier

if TYPE_CHECKING:
    from socketproxyd.metrics.service import MetricsService
    from socketproxyd.stream.earlyrelay import Handover


def installSignalHandlers(reactor: ProxyReactor, log: Logger, hurry: Callable[[], None]) -> None:
    """
    Once the reactor runs (after Twisted installs its own handlers): stop
    on SIGTERM and SIGINT, call C{hurry} on such a signal while a stop (a
    drain) is already under way, however it began (a signal, an idle
    exit), and log and otherwise ignore SIGHUP.

    Twisted's handlers make twistd and twist re-raise the signal that
    stopped the reactor, so the process would die of it; the contract is
    exit status 0 after a graceful stop, under every runner. There is
    nothing to reload on SIGHUP, and dying of it (as the original does)
    would drop every connection.
    """

    def stopOrHurry() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            hurry()

    def stop(signum: int, frame: object) -> None:
        reactor.callFromThread(stopOrHurry)

    def hangup(signum: int, frame: object) -> None:
        reactor.callFromThread(log.info, "SIGHUP ignored: there is no configuration to reload")

    def install() -> None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)

    reactor.callWhenRunning(install)


class ProxyService(MultiService):
    """
    The whole proxy (see the module docstring).

    @ivar ledger: what is served now; the tracker of every connection.
    @ivar limit: C{--connections-max} and the descriptor budget.
    @ivar listeners: the service that opens and closes the listeners.
    @ivar drain: the drain on stop, which a second SIGTERM or SIGINT hurries.
    """

    log = Logger(observer=observer)

    def __init__(
        self,
        reactor: ProxyReactor,
        routes: Routes | Target,
        settings: ProxySettings,
        connectionsMax: int = 256,
        exitIdleTime: float = math.inf,
        drainTimeout: float = 0.0,
        notifier: Notifier | None = None,
        findInherited: Callable[[], Sequence[InheritedSocket]] = list,
        listen: Sequence[str] = (),
        limitsDescriptors: bool = False,
        metrics: str | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.limit = ConnectionLimit(reactor, connectionsMax)
        self.ledger = ledger = Ledger(self.limit)
        self.metrics: MetricsService | None = None

        def inherited() -> Sequence[InheritedSocket]:
            found = findInherited()
            return found if self.metrics is None else self.metrics.takeInherited(found)

        self.listeners = ListenerService(
            reactor, routes, settings, ledger, self.limit, inherited, listen, limitsDescriptors
        )
        listening = self.listeners.listening
        notifier = notifier if notifier is not None else Notifier(reactor, {})
        self.drain = drain = DrainService(reactor, ledger, listening, drainTimeout)
        idleExit = IdleExitService(reactor, ledger, exitIdleTime)
        status = StatusService(reactor, notifier, ledger, self.limit, listening)
        for service in (self.listeners, self.limit, drain, idleExit, status):
            service.setServiceParent(self)
        if not math.isinf(exitIdleTime):
            ledger.follow(idleExit)
        if notifier.address is not None:
            ledger.follow(status)
        if metrics is not None:
            from socketproxyd.metrics.service import MetricsService

            try:
                self.metrics = exporter = MetricsService(
                    reactor, metrics, ledger, self.limit, listening
                )
            except StartupError as e:
                exitAtStartup(str(e))
            ledger.follow(exporter.collector, opens=False)
        if settings.logsCloses:
            ledger.follow(CloseLog(reactor), opens=False)

    def setServiceParent(self, parent: IServiceCollection) -> None:
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

    def privilegedStartService(self) -> None:
        if self.metrics is not None:
            self.metrics.privilegedStartService()
        super().privilegedStartService()

    def startService(self) -> None:
        installSignalHandlers(self.reactor, self.log, self.drain.hurry)
        if self.metrics is not None:
            self.metrics.startService()
        super().startService()

    def takeOver(self, handover: Handover) -> None:
        """
        Serve on the connections the early relay served while Twisted
        loaded, and, once running, act on the signals received since it
        began as on any other: each is sent again then.
        """
        pairs = handover.pairs
        if handover.error is not None:
            self.log.error(
                "The early relay failed ({why}); the {count} connection(s) it was serving "
                "are reset",
                why=handover.failure,
                count=handover.reset,
            )
            self.log.debug(
                "The early relay's error:\n{text}",
                text="".join(traceback.format_exception(handover.error)).rstrip(),
            )
        self.listeners.listening.adopt(pairs)
        if pairs:
            self.log.debug(
                "Took over {count} connection(s) from the early relay after {ms} ms, "
                "with {upstream} bytes sent to the target and {downstream} to clients",
                count=len(pairs),
                ms=round((self.reactor.seconds() - handover.started) * 1000),
                upstream=sum(pair.directions[UPSTREAM].count for pair in pairs),
                downstream=sum(pair.directions[DOWNSTREAM].count for pair in pairs),
            )

        def sendAgain() -> None:
            for signum in handover.signals:
                os.kill(os.getpid(), signum)

        self.reactor.callWhenRunning(sendAgain)

    def stopService(self) -> Deferred[object]:
        """
        Stop every service (a drain may take its time), then the metrics
        listener, so that a scrape during the drain is answered.
        """
        stopped = super().stopService()
        metrics = self.metrics
        if metrics is not None:
            stopped.addBoth(lambda result: metrics.stopService().addCallback(lambda _: result))
        return stopped
