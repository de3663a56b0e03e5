# -*- test-case-name: tests.unit.test_service -*-
"""
L{ListenerService}: opens the listening sockets when the proxy starts (the
inherited sockets, then every C{--listen} endpoint), accepts on them while
the limit allows, and closes them when it stops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from socketproxyd.config.routes import Routes
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.events import Tracker
from socketproxyd.fdbudget import raiseSoftLimit
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.limit import ConnectionLimit
from socketproxyd.service.listenerset import ListenerSet
from socketproxyd.service.opening import StartupError, exitAtStartup
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.systemd.activation import ActivationError, InheritedSocket


class ListenerService(Service):
    """
    The listeners (see the module docstring), serving every client through
    C{tracker} and switched on and off by C{limit}.

    @ivar listening: the open listeners and the factory of each route.
    """

    def __init__(
        self,
        reactor: ProxyReactor,
        routes: Routes | Target,
        settings: ProxySettings,
        tracker: Tracker,
        limit: ConnectionLimit,
        findInherited: Callable[[], Sequence[InheritedSocket]] = list,
        listen: Sequence[str] = (),
        limitsDescriptors: bool = False,
    ) -> None:
        self.findInherited = findInherited
        self.descriptions = listen
        self.limit = limit
        self.limitsDescriptors = limitsDescriptors
        sweeper = PipeSweeper(reactor, limit.budget, tracker.fdsExhausted, settings.pipeSize)
        routes = routes if isinstance(routes, Routes) else Routes(routes)
        self.listening = ListenerSet(reactor, routes, settings, tracker, sweeper)
        limit.switch = self.listening
        self._opened = False

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

    def open(self) -> None:
        """
        Open every listener, once; then size the limit to the descriptors.
        """
        if self._opened:
            return
        self._opened = True
        try:
            self.listening.open(self.findInherited(), self.descriptions)
        except (ActivationError, StartupError) as e:
            exitAtStartup(str(e))
        if self.limitsDescriptors:
            self.limit.sizeToDescriptors(raiseSoftLimit())

    def stopService(self) -> Deferred:
        """
        Stop accepting and close the listeners; open connections go on.
        """
        super().stopService()
        return self.listening.close()
