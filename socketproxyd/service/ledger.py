# -*- test-case-name: tests.unit.test_service -*-
"""
L{Ledger}: the proxy's L{Tracker}. It keeps what is served now, passes
every opened and closed event on to its consumers in order, and answers
the data paths' questions about room from the limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from socketproxyd.events import Consumer, Served
from socketproxyd.service.limit import ConnectionLimit


class Ledger:
    """
    What is served now (see the module docstring).

    @ivar open: every connection and session open now.
    @ivar limit: the connection limit, the first consumer of every event.
    @ivar onOpened: what is called at each open, in order (the limit's
        first).
    @ivar onClosed: what is called at each close, in order.
    """

    def __init__(self, limit: ConnectionLimit) -> None:
        self.open: set[Served] = set()
        self.limit = limit
        self._consumers: list[Consumer] = []
        self.onOpened: list[Callable[[Served], None]] = []
        self.onClosed: list[Callable[[Served], None]] = []
        self.follow(limit)

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """
        The limit and those that L{follow} it, in the order they began to.
        """
        return tuple(self._consumers)

    def follow(self, consumer: Consumer, opens: bool = True) -> None:
        """
        Tell C{consumer} of every event from now on, after those that
        follow already; without C{opens}, of closes only (a consumer that
        has nothing to do at an open then costs nothing there).
        """
        self._consumers.append(consumer)
        if opens:
            self.onOpened.append(consumer.opened)
        self.onClosed.append(consumer.closed)

    def opened(self, served: Served) -> None:
        self.open.add(served)
        for opened in self.onOpened:
            opened(served)

    def closed(self, served: Served) -> None:
        if served not in self.open:
            return
        self.open.discard(served)
        for closed in self.onClosed:
            closed(served)

    def room(self) -> int:
        return self.limit.room()

    def fdsExhausted(self) -> None:
        self.limit.fdsExhausted()

    def waitForDescriptors(self, again: Callable[[], None]) -> None:
        self.limit.waitForDescriptors(again)

    def count(self) -> int:
        """
        How many connections and sessions are open.
        """
        return len(self.open)

    def sessions(self) -> int:
        """
        How many of them are datagram sessions.
        """
        return sum(1 for served in self.open if served.datagrams is not None)

    def countsByRoute(self) -> Counter[str]:
        """
        How many are open per named listener.
        """
        return Counter(s.server.route for s in self.open if s.server.route is not None)

    def shutdownAll(self) -> None:
        """
        End everything served now, at once (streams with a reset).
        """
        for served in list(self.open):
            served.shutdown()
