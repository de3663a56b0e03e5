"""
Unit tests for L{socketproxyd.routeserver.RouteServer.transparentSource}:
which address a connection to the target leaves from with C{--transparent}.
"""

from __future__ import annotations

import socket

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.routeserver import RouteServer
from tests.support.fakes import FakeTracker


def server(transparent: str) -> RouteServer:
    settings = ProxySettings(transparent=transparent)
    return RouteServer(Clock(), parseTarget("10.0.2.2:80"), settings, FakeTracker())  # type: ignore[arg-type]


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
