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

    def test_pipeCapacity(self) -> None:
        """
        Pipe pairs (four fds) get what the connections leave.
        """
        from socketproxyd.fdlimit import pipeCapacity

        self.assertEqual(pipeCapacity(1024, 10, 100), (1024 - 10 - RESERVE - 200) // 4)
        self.assertEqual(pipeCapacity(64, 10, 19), 0)
