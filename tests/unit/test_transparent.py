"""
Unit tests for L{socketproxyd.routeserver.RouteServer.transparentSource}:
which address a connection to the target leaves from with C{--transparent}.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.routeserver import RouteServer
from socketproxyd.transparent import bindTransparent, mayBindTransparent
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
        kernel's, for a stream and a datagram socket alike.
        """
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(("127.0.0.1", 0))
        datagramClient = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(datagramClient.close)
        datagramClient.bind(("127.0.0.1", 0))
        for kind, holder, target in (
            (socket.SOCK_STREAM, client, listener.getsockname()),
            (socket.SOCK_DGRAM, datagramClient, receiver.getsockname()),
        ):
            host, port = holder.getsockname()
            with socket.socket(socket.AF_INET, kind) as sock:
                bindTransparent(sock, (host, port))
                sock.connect(target)
                boundHost, boundPort = sock.getsockname()
                self.assertEqual(boundHost, host)
                self.assertNotIn(boundPort, (0, port))

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
