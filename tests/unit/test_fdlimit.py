"""
Tests for L{socketproxyd.fdbudget}.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.fdbudget import PIPE_HEADROOM, RESERVE, FdBudget, openDescriptors


class FdBudgetTests(SynchronousTestCase):
    def test_forLimit(self) -> None:
        """
        What is open and the reserve are set aside; connections take two.
        """
        budget = FdBudget.forLimit(1024, 10)
        self.assertEqual(budget.free, 1024 - 10 - RESERVE)
        self.assertEqual(budget.connections(), (1024 - 10 - RESERVE) // 2)
        self.assertEqual(FdBudget.forLimit(10 + RESERVE + 1, 10).connections(), 0)
        self.assertEqual(FdBudget.forLimit(10, 10).connections(), 0)

    def test_kept(self) -> None:
        """
        What L{FdBudget.keep} sets aside is never counted free: not at
        once, not when the limit is counted, not when the budget is
        counted afresh.
        """
        budget = FdBudget()
        budget.keep(6)
        budget.count(1024, 10)
        self.assertEqual(budget.free, 1024 - 10 - RESERVE - 6)
        budget.keep(2)
        self.assertEqual(budget.free, 1024 - 10 - RESERVE - 8)
        budget.recount(20)
        self.assertEqual(budget.free, 1024 - 20 - RESERVE - 8)

    def test_keptOpenCountedOnce(self) -> None:
        """
        Kept fds that are open now are in the count of open fds a recount
        takes: they are not set aside a second time.
        """
        budget = FdBudget()
        budget.keep(6)
        budget.count(1024, 10)
        budget.keptOpen = 3
        budget.recount(13)
        self.assertEqual(budget.free, 1024 - 13 - RESERVE - (6 - 3))

    def test_followsTheLimit(self) -> None:
        """
        A soft limit lowered (or raised) from outside moves what is free by
        as much.
        """
        budget = FdBudget.forLimit(1024, 10)
        budget.take(100)
        budget.refresh(200)
        self.assertEqual(budget.free, 200 - 10 - 100 - RESERVE)
        self.assertEqual(budget.connections(), (200 - 10 - 100 - RESERVE) // 2)
        budget.refresh(100)
        self.assertEqual(budget.connections(), 0)
        budget.refresh(1024)
        self.assertEqual(budget.free, 1024 - 10 - 100 - RESERVE)

    def test_pipesLeaveRoomForConnections(self) -> None:
        """
        A pipe pair (four fds) is only taken while room for PIPE_HEADROOM
        more connections remains.
        """
        budget = FdBudget(4 + 2 * PIPE_HEADROOM)
        self.assertTrue(budget.takePipes())
        self.assertFalse(budget.takePipes())
        self.assertEqual(budget.free, 2 * PIPE_HEADROOM)

    def test_giveNotifies(self) -> None:
        budget = FdBudget(10)
        released = []
        budget.onReleased = lambda: released.append(budget.free)
        budget.take(2)
        budget.give(2)
        self.assertEqual(released, [10])

    def test_openDescriptors(self) -> None:
        """
        The count follows descriptors as they are opened and closed.
        """
        before = openDescriptors()
        opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
        try:
            self.assertEqual(openDescriptors(), before + 5)
        finally:
            for fd in opened:
                os.close(fd)
        self.assertEqual(openDescriptors(), before)
