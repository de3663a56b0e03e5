"""
Unit tests for L{socketproxyd.routeserver.RouteServer.transparentSource}:
which address a connection to the target leaves from with C{--transparent}.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd import logs
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.routeserver import RouteServer
from socketproxyd.transparent import bindTransparent, mayBindTransparent
from tests.support.fakes import FakeTracker


def server(transparent: str, target: str = "10.0.2.2:80") -> RouteServer:
    settings = ProxySettings(transparent=transparent)
    return RouteServer(Clock(), parseTarget(target), settings, FakeTracker())  # type: ignore[arg-type]


class SourceTests(SynchronousTestCase):
    def test_ownAddress(self) -> None:
        """
        A client's own address and port, as Twisted or the socket module
        gives it, of the target's family.
        """
        route = server("on")
        client = IPv4Address("TCP", "10.0.1.2", 4000)
        self.assertEqual(route.transparentSource(socket.AF_INET, client), ("10.0.1.2", 4000))
        self.assertEqual(
            route.transparentSource(socket.AF_INET6, ("fd00::2", 5, 0, 0)), ("fd00::2", 5, 0, 0)
        )

    def test_mappedIsIPv4(self) -> None:
        """
        An IPv4 client of a dual-stack listener is connected from its IPv4
        address.
        """
        route = server("on")
        client = IPv6Address("TCP", "::ffff:10.0.1.2", 4000)
        self.assertEqual(route.transparentSource(socket.AF_INET, client), ("10.0.1.2", 4000))

    def test_unusable(self) -> None:
        """
        A UNIX client, or one of the other family: refused, or with
        C{=try} connected from the proxy's own address.
        """
        for client in (UNIXAddress(None), IPv6Address("TCP", "fd00::2", 5)):
            with self.assertRaises(OSError):
                server("on").transparentSource(socket.AF_INET, client)
            self.assertIsNone(server("try").transparentSource(socket.AF_INET, client))

    def test_loopbackOnlyToLoopback(self) -> None:
        """
        A client on loopback (a health check on the proxy's host) can be
        connected from its address to a target on loopback only: to one
        elsewhere it is refused, or with C{=try} connected from the
        proxy's own address.
        """
        for client, family, target in (
            (("127.0.0.1", 4000), socket.AF_INET, "127.0.0.2:80"),
            (("::1", 4000, 0, 0), socket.AF_INET6, "[::1]:80"),
        ):
            self.assertEqual(server("on", target).transparentSource(family, client), client)
            elsewhere = "10.0.2.2:80" if family == socket.AF_INET else "[fd00::9]:80"
            with self.assertRaises(OSError):
                server("on", elsewhere).transparentSource(family, client)
            self.assertIsNone(server("try", elsewhere).transparentSource(family, client))


class BindTests(SynchronousTestCase):
    """
    L{bindTransparent} on loopback, as a client on the proxy's own host
    is served (needs CAP_NET_ADMIN or CAP_NET_RAW).
    """

    def setUp(self) -> None:
        if not mayBindTransparent():
            raise SkipTest("binding transparent sockets needs CAP_NET_ADMIN or CAP_NET_RAW")

    def test_portInUseTakesTheAddressAlone(self) -> None:
        """
        A client's address and port that this host's own client socket
        holds: the connection leaves from the same address, its port the
        kernel's, for a stream and a datagram socket, IPv4 and IPv6.
        """
        for family, loopback in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                self.assertServedFromTheAddress(family, kind, loopback)

    def assertServedFromTheAddress(self, family: int, kind: int, loopback: str) -> None:
        target = socket.socket(family, kind)
        self.addCleanup(target.close)
        target.bind((loopback, 0))
        holder = socket.socket(family, kind)
        self.addCleanup(holder.close)
        if kind == socket.SOCK_STREAM:
            target.listen()
            holder.connect(target.getsockname())
        else:
            holder.bind((loopback, 0))
        held = holder.getsockname()
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        logs.setLevel("debug")
        self.addCleanup(logs.setLevel, "info")
        with socket.socket(family, kind) as sock:
            bindTransparent(sock, held)
            sock.connect(target.getsockname())
            bound = sock.getsockname()
        self.assertEqual(bound[0], held[0])
        self.assertNotIn(bound[1], (0, held[1]))
        self.assertEqual(
            [
                formatEvent(e)
                for e in events
                if e.get("log_namespace") == "socketproxyd.transparent"
            ],
            [
                f"Port {held[1]} of {held[0]} is taken on this host: "
                f"connecting from {held[0]} with another port"
            ],
        )

    def test_otherErrorsRaised(self) -> None:
        """
        Any other error of the bind is raised (here a socket bound
        already: EINVAL).
        """
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            with self.assertRaises(OSError) as raised:
                bindTransparent(sock, ("127.0.0.1", 4000))
            self.assertEqual(raised.exception.errno, errno.EINVAL)
