"""
L{RouteServer}: what serving one route takes, shared by the stream factory
and the datagram relay.
"""

from __future__ import annotations

from socketproxyd.config.routes import prefixFor
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.events import Tracker
from socketproxyd.reactors import ProxyReactor


class RouteServer:
    """
    What serving one route takes, for its stream factory and its datagram
    relay alike: the reactor, the target, the settings, the tracker that
    counts connections, and the route's name.

    @ivar route: the name of the listeners whose clients these are, if
        they have one; C{routePrefix} puts it first in their log lines.
    @ivar recordsAddresses: whether connections keep their addresses and
        start time, which only a PROXY header, the close line and
        C{--transparent} use.
    @ivar recordsTimes: whether connections keep their start time and
        when the target answered (the close line, the metrics).
    @ivar connectRetries: how many times a connection of the route tried
        a target that was not ready again.
    """

    def __init__(
        self,
        reactor: ProxyReactor,
        target: Target,
        settings: ProxySettings,
        tracker: Tracker,
        route: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.settings = settings
        self.tracker = tracker
        self.route = route
        self.routePrefix = prefixFor(route)
        self.recordsAddresses = (
            settings.proxyProtocol is not None or settings.logsCloses or bool(settings.transparent)
        )
        self.recordsTimes = self.recordsAddresses or settings.timesConnections
        self.connectRetries = 0
