"""
Tests for L{socketproxyd.config.target}.
"""

import socket

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.target import Target, parseTarget
from socketproxyd.stream.splice.connector import BareConnector


class ParseTargetTests(SynchronousTestCase):
    """
    L{parseTarget} accepts every TARGET form of README.rst (TARGET) and rejects at
    start-up what could never work.
    """

    def test_forms(self) -> None:
        cases = {
            "127.0.0.1:8080": Target("ipv4", "127.0.0.1", 8080),
            "127.0.0.1": Target("ipv4", "127.0.0.1", 80),
            "127.0.0.1:http": Target("ipv4", "127.0.0.1", 80),
            "[::1]:8080": Target("ipv6", "::1", 8080),
            "[::1]": Target("ipv6", "::1", 80),
            "::1:8080": Target("ipv6", "::1", 8080),
            "localhost:5432": Target("name", "localhost", 5432),
            "backend.example": Target("name", "backend.example", 80),
            "/run/app.sock": Target("unix", "/run/app.sock"),
            "@app": Target("unix", "\0app"),
        }
        for text, target in cases.items():
            self.assertEqual(parseTarget(text), target, text)

    def test_rejected(self) -> None:
        """
        Each of these gets a one-line reason.
        """
        for text in [
            "",
            "127.0.0.1:",
            ":8080",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "127.0.0.1:nosuchservice",
            "[::1",
            "[::1]x",
            "[127.0.0.1]:80",
            "::1",
            "bad host:80",
            "@",
            "/" + "x" * 120,
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                parseTarget(text)
            self.assertNotIn("\n", str(caught.exception))

    def test_unclosedBracket(self) -> None:
        """
        An IPv6 address without its closing bracket is told the form to
        use.
        """
        with self.assertRaises(ValueError) as caught:
            parseTarget("[::1")
        self.assertEqual(
            str(caught.exception),
            "target '[::1' has '[' without ']': write an IPv6 target as [ADDRESS]:PORT, "
            "e.g. [::1]:8080",
        )

    def test_str(self) -> None:
        """
        Targets print the way an operator would write them.
        """
        for text in ["127.0.0.1:80", "[::1]:80", "/run/a.sock", "@abs", "name:81"]:
            self.assertEqual(str(parseTarget(text)), text)


class EndpointTests(SynchronousTestCase):
    """
    L{Target.endpoint} picks the endpoint that fits: literals skip the
    resolver, names try every address.
    """

    def test_endpointKinds(self) -> None:
        reactor = MemoryReactorClock()
        cases = [
            ("127.0.0.1:1", TCP4ClientEndpoint),
            ("[::1]:1", TCP6ClientEndpoint),
            ("localhost:1", HostnameEndpoint),
            ("/a.sock", UNIXClientEndpoint),
        ]
        for text, kind in cases:
            self.assertIsInstance(parseTarget(text).endpoint(reactor, 30), kind)

    def test_abstractAddress(self) -> None:
        """
        C{@name} connects to the abstract socket C{\\0name}.
        """
        reactor = MemoryReactorClock()
        parseTarget("@spx").endpoint(reactor, 30).connect(_NullFactory())
        self.assertEqual(reactor.unixClients[0][0], "\0spx")

    def test_bareConnectors(self) -> None:
        """
        Literal targets also get a bare-socket connector for the splice path,
        with the address in the form C{connect} takes (a scope as its
        interface index) and the ordinary endpoint as its fallback; names,
        and scopes that name no interface, do not.
        """
        reactor = MemoryReactorClock()
        cases = [
            ("127.0.0.1:81", socket.AF_INET, ("127.0.0.1", 81)),
            ("[::1]:82", socket.AF_INET6, ("::1", 82, 0, 0)),
            ("[fe80::1%lo]:83", socket.AF_INET6, ("fe80::1", 83, 0, socket.if_nametoindex("lo"))),
            ("/a.sock", socket.AF_UNIX, "/a.sock"),
            ("@spx", socket.AF_UNIX, "\0spx"),
        ]
        for text, family, address in cases:
            target = parseTarget(text)
            endpoint = BareConnector.forTarget(reactor, target, target.endpoint(reactor, 7))
            self.assertEqual((endpoint.family, endpoint.address), (family, address))
            self.assertIsInstance(endpoint.fallback, type(parseTarget(text).endpoint(reactor, 7)))
        fallback = parseTarget("127.0.0.1:1").endpoint(reactor, 7)
        self.assertIsNone(BareConnector.forTarget(reactor, parseTarget("localhost:1"), fallback))
        self.assertIsNone(
            BareConnector.forTarget(reactor, parseTarget("[fe80::1%nosuch0]:1"), fallback)
        )


class _NullFactory:
    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass
