"""
The one event model of everything the proxy serves, stream connections and
datagram sessions alike: a L{Served} client opens and closes, reported to a
L{Tracker}, which passes both events on to every L{Consumer}; the two
directions bytes move in; how a served client ends (L{Ending}); and the one
way an idle timer is kept.

Of the services, the data paths know only this module: a metrics exporter
is one more consumer, a worker process one more producer of the same two
events.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime

if TYPE_CHECKING:
    from socketproxyd.routeserver import RouteServer

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
    BAD_HEADER = "bad header"


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


class Served(Protocol):
    """
    One client the proxy serves, a stream connection or a datagram
    session, as everything that follows the proxy's clients sees it: the
    route it came by, byte (and datagram) counts, when it started, how it
    ended, its addresses, and to be shut down.

    @ivar server: the route's server (its name, target and settings).
    @ivar counts: bytes moved, indexed by direction.
    @ivar datagrams: datagrams moved, indexed by direction; C{None} for a
        stream.
    @ivar started: when it was accepted, by the reactor's clock (0.0 when
        addresses and times are not recorded).
    @ivar connected: when its target answered, likewise (0.0 until then,
        and for a datagram session).
    @ivar ending: how it ended, once that is decided.
    """

    @property
    def server(self) -> RouteServer: ...

    @property
    def datagrams(self) -> list[int] | None: ...

    counts: list[int]
    started: float
    connected: float
    ending: Ending | None

    def addresses(self) -> tuple[IAddress, IAddress] | None:
        """
        The address the client reached and the client's own, or C{None}
        when the route records no addresses.
        """

    def shutdown(self) -> None:
        """
        End it now because the proxy stops: a stream with a reset.
        """


class Admission(Protocol):
    """
    What decides how many more clients may be served, and hears that the
    process ran out of descriptors.
    """

    def room(self) -> int:
        """
        How many more connections or datagram sessions fit now.
        """

    def fdsExhausted(self) -> None:
        """
        An accept, a connect or a pipe failed, or there is no room, for
        want of descriptors.
        """


class Tracker(Admission, Protocol):
    """
    What a data path reports every served client to, and asks for room:
    the one interface between the paths and what follows them (the limit,
    the descriptor budget, idle exit, drain, STATUS, the close line, and
    whatever else listens to L{opened} and L{closed}).
    """

    def opened(self, served: Served) -> None:
        """
        C{served} was accepted (a connection) or opened (a session).
        """

    def closed(self, served: Served) -> None:
        """
        C{served} is over: its sockets are closed and its counts final.
        """

    def waitForDescriptors(self, again: Callable[[], None]) -> None:
        """
        A connect failed for want of descriptors: call C{again} once some
        are free.
        """


class Consumer(Protocol):
    """
    Follows what is served: one of the services or log lines that hear
    every L{Tracker.opened} and L{Tracker.closed}.
    """

    def opened(self, served: Served) -> None:
        """
        C{served} was accepted and is counted from now on.
        """

    def closed(self, served: Served) -> None:
        """
        C{served} is over: its counts and its ending are final.
        """


def cancelled(call: IDelayedCall | None) -> None:
    """
    Cancel C{call} if it is still to come (a timer that may have fired or
    never been set).
    """
    if call is not None and call.active():
        call.cancel()
