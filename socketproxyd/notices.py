# -*- test-case-name: tests.unit.test_service -*-
"""
L{Notice}: when a recurring condition is worth a log line.
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IReactorTime


class Notice:
    """
    A condition said once per episode, and at most once per C{interval}
    however often episodes come (the limit reached, descriptors running
    out, a target not ready): the caller logs, the notice decides when.

    @ivar said: whether the current episode's beginning was said.
    @ivar count: episodes begun since the last one said.
    """

    def __init__(self, clock: IReactorTime, interval: float = 60.0) -> None:
        self.clock = clock
        self.interval = interval
        self.lastSaid = -math.inf
        self.said = False
        self.count = 0

    def begins(self) -> int:
        """
        An episode begins: 0 if it is not to be said now, else how many
        began since the last one said, this one included.
        """
        self.count += 1
        now = self.clock.seconds()
        if now - self.lastSaid < self.interval:
            return 0
        count, self.count = self.count, 0
        self.lastSaid, self.said = now, True
        return count

    def ends(self) -> bool:
        """
        The episode is over: whether its beginning was said (and so its
        end is worth saying).
        """
        said, self.said = self.said, False
        return said
