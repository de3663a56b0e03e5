"""
Tests for L{socketproxyd.fdlimit}.
"""

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.fdlimit import RESERVE, connectionCapacity, openDescriptors


class CapacityTests(SynchronousTestCase):
    def test_capacity(self) -> None:
        """
        Two fds per connection, after what is open and the reserve.
        """
        self.assertEqual(connectionCapacity(1024, 10), (1024 - 10 - RESERVE) // 2)
        self.assertEqual(connectionCapacity(20, 10), 1)

    def test_openDescriptors(self) -> None:
        self.assertGreaterEqual(openDescriptors(), 3)
