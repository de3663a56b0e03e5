"""
A datagram relay on a wildcard-style listener whose target is a name: the
client's destination is kept while the name resolves (real UDP sockets on the
loopback interface, a fake resolver).
"""

from __future__ import annotations

import socket
import struct

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.datagram.packetinfo import IP_PKTINFO
from socketproxyd.datagram.port import DatagramPort
from socketproxyd.datagram.relay import DatagramRelay
from tests.support.fakes import FakeFDReactor, FakeTracker


class _Resolver:
    """
    Keeps the resolution receivers, for the test to answer.
    """

    def __init__(self) -> None:
        self.receivers: list[object] = []

    def resolveHostName(self, receiver: object, host: str, port: int, **kwargs: object) -> None:
        self.receivers.append(receiver)


class ResolvingTests(SynchronousTestCase):
    """
    A named target's client waits for the name with where it wrote to, and
    its session, once open, answers from there.
    """

    def test_destinationKeptWhileResolving(self) -> None:
        reactor = FakeFDReactor()
        reactor.nameResolver = _Resolver()
        backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        backend.bind(("127.0.0.1", 0))
        self.addCleanup(backend.close)
        listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listening.bind(("127.0.0.1", 0))
        target = parseTarget(f"localhost:{backend.getsockname()[1]}")
        relay = DatagramRelay(reactor, target, ProxySettings(), FakeTracker())
        port = DatagramPort(reactor, listening, relay)
        self.addCleanup(port.stopListening)
        client = ("127.0.0.1", 40000)
        written = socket.inet_aton("127.0.0.2")
        info = struct.pack("=i4s4s", 1, written, written)
        relay.received(b"x", client, [(socket.IPPROTO_IP, IP_PKTINFO, info)])
        [receiver] = reactor.nameResolver.receivers
        receiver.addressResolved(IPv4Address("UDP", "127.0.0.1", backend.getsockname()[1]))
        receiver.resolutionComplete()
        [(key, session)] = relay.sessions.items()
        self.assertEqual(key, (client, socket.inet_aton("127.0.0.2")))
        self.assertEqual(session.local.host, "127.0.0.2")
        self.assertEqual(session.replyControl[0][2][4:8], socket.inet_aton("127.0.0.2"))
        self.assertEqual(backend.recvfrom(10)[0], b"x")
        self.assertEqual(relay.resolving, {})
