"""
Unit tests for L{socketproxyd.stream.factory.ProxyFactory}: how it connects each
pump to the target.
"""

from __future__ import annotations

import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest

from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.stream.splice import pipes
from tests.support.fakes import ConnectionTestCase
from tests.support.splicing import SocketConnector


class FactoryTests(ConnectionTestCase):
    """
    How the factory connects each pump to the target.
    """

    def factory(self, target: str = "127.0.0.1:8080", **settings: object) -> ProxyFactory:
        return ProxyFactory(
            MemoryReactorClock(), parseTarget(target), ProxySettings(**settings), self.tracker
        )

    def test_bareConnectorOnlyForSplicing(self) -> None:
        """
        The bare-socket connector exists for literal targets unless the
        data path is pinned to transports.
        """
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.assertTrue(self.factory().splices)
        self.assertIsNotNone(self.factory().bareConnector)
        self.assertFalse(self.factory(dataPath="transport").splices)
        self.assertIsNone(self.factory(dataPath="transport").bareConnector)
        self.assertIsNone(self.factory("localhost:80").bareConnector)

    def test_connectTargetByPump(self) -> None:
        """
        A pump that takes sockets connects through the bare connector; one
        that does not, through the endpoint.
        """
        factory = self.factory()
        connector = factory.bareConnector = SocketConnector(socket.socket)
        self.assertIs(factory.connectTarget(True), socket.socket)
        self.assertEqual(connector.attempts, 1)
        self.assertEqual(factory.reactor.tcpClients, [])
        factory.connectTarget(False)
        self.assertEqual(connector.attempts, 1)
        self.assertEqual(factory.reactor.tcpClients[0][:2], ("127.0.0.1", 8080))
