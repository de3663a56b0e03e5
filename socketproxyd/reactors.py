"""
L{ProxyReactor}: the reactor interfaces the proxy uses, as one type for the
signatures that take the reactor (Twisted's default reactors provide them
all).
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)


class ProxyReactor(
    IReactorCore,
    IReactorTime,
    IReactorFDSet,
    IReactorSocket,
    IReactorTCP,
    IReactorUNIX,
    IReactorPluggableNameResolver,
    IReactorFromThreads,
):
    """
    A reactor that runs the proxy: time, descriptors, adopted sockets, TCP
    and UNIX connections, name resolution, and calls from signal handlers.
    """
