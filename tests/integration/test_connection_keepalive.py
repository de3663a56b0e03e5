"""
L{socketproxyd.stream.connection} on the splice pump between real TCP sockets
on the loopback interface: TCP keepalive is set on both sockets when asked
for, and only then.
"""

from __future__ import annotations

from socketproxyd.config.settings import ProxySettings
from tests.support.fakes import ConnectionTestCase
from tests.support.splicing import KeepaliveBehaviour, SpliceHarness


class SplicePumpKeepaliveTests(KeepaliveBehaviour, ConnectionTestCase):
    """
    Keepalive on the splice pump, between TCP socket pairs on the loopback
    interface (the transport pump's variant is a unit test in
    L{tests.unit.test_connection_pumps}).
    """

    def harness(self, **settings: object) -> SpliceHarness:
        """
        A connection between UNIX socket pairs, whose sockets move bytes
        synchronously; between TCP ones on the loopback interface for the
        keepalive test, which moves none.
        """
        tcp = "keepalive" in settings
        harness = SpliceHarness(ProxySettings(**settings), self.tracker, self, tcp)
        self.assertEqual(harness.connector.attempts, 1)
        return harness
