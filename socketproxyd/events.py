"""
The one event model of everything the proxy serves, stream connections and
datagram sessions alike: the two directions bytes move in, how a served
client ends (L{Ending}), and the one way an idle timer is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from twisted.internet.interfaces import IDelayedCall, IReactorTime

UPSTREAM = 0
"""The direction from the client to the target."""
DOWNSTREAM = 1
"""The direction from the target to the client."""


class Ending(Enum):
    """
    How a connection ended, as its close line says it.
    """

    DONE = "done"
    RESET = "reset"
    CONNECT_FAILED = "connect failed"
    CONNECT_TIMEOUT = "connect timeout"
    IDLE_TIMEOUT = "idle timeout"
    SHUTDOWN = "shutdown"
    REFUSED = "refused"


def stillIdle(clock: IReactorTime, due: float, check: Callable[[], None]) -> IDelayedCall | None:
    """
    An idle timer's check: C{check} is called again at C{due} (the last
    activity plus the timeout) if that is still to come, as a new delayed
    call; C{None} when the time is up.
    """
    now = clock.seconds()
    if now < due:
        return clock.callLater(due - now, check)
    return None
