"""
L{RouteServer}: what serving one route takes, shared by the stream factory
and the datagram relay.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import TYPE_CHECKING, cast

from twisted.logger import Logger

from socketproxyd.addresses import RawAddress, describeAddress, hostAddress
from socketproxyd.config.routes import prefixFor
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import Target
from socketproxyd.events import Tracker
from socketproxyd.logs import observer
from socketproxyd.notices import Notice
from socketproxyd.proxyheader import hostPort
from socketproxyd.reactors import ProxyReactor

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress


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

    log = Logger(observer=observer)

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
        self.sourceUsable = Notice(reactor, interval=0)
        self.loopbackTarget = bool(settings.transparent) and _loopbackTarget(target.host)

    def transparentSource(self, family: int, client: object) -> RawAddress | None:
        """
        The address to connect to the target (of C{family}) from, with
        C{--transparent}, for a client at C{client} (a Twisted address or
        the socket module's): the client's own, if it is an IP address of
        that family and, if a loopback address, the target's is too (the
        kernel routes nothing from a loopback address to another host);
        otherwise (a UNIX-socket client, another family, a client on
        loopback of a target elsewhere) none with C{--transparent=try}. An
        unusable address is said once per episode.

        @raise OSError: for such a client without C{=try}.
        """
        address = hostPort(client)
        if address is not None:
            host, port = address
            if host.startswith("::ffff:") and "." in host:
                host = host.removeprefix("::ffff:")
            if (":" in host) == (family == socket.AF_INET6) and (
                self.loopbackTarget or not _loopback(host)
            ):
                self.sourceUsable.ends()
                return (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        served = self.settings.transparent == "try"
        if not self.sourceUsable.said and self.sourceUsable.begins():
            self.log.warn(
                "{route}Cannot connect to {target} from the address of {peer}; {what}",
                route=self.routePrefix,
                target=str(self.target),
                peer=describeAddress(
                    hostAddress(*address)
                    if address is not None
                    else cast("IAddress | None", client)
                ),
                what="serving such clients from the proxy's address"
                if served
                else "closing such clients (--transparent=try would serve them)",
            )
        if not served:
            raise OSError(errno.EADDRNOTAVAIL, "its address cannot be connected from")
        return None


def _loopback(host: str) -> bool:
    """
    Whether C{host}, as the socket module or a PROXY header's reader
    spells an address (127.0.0.0/8 dotted, IPv6 compressed), is a loopback
    address: a per-connection test, without parsing.
    """
    return host.startswith("127.") or host == "::1"


def _loopbackTarget(host: str) -> bool:
    """
    Whether a TARGET's host, as the command line spells it, is a loopback
    address.
    """
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
