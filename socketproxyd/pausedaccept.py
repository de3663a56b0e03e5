# -*- test-case-name: tests.test_pausedaccept -*-
"""
Accepted connections whose transports start paused.

A L{socketproxyd.proxy.ServerProtocol} reads nothing from its client before
the target is connected, so it pauses its transport first thing. Twisted's
TCP and UNIX server transports register their socket for reading as they
are built, so every accepted client cost one C{epoll_ctl} to register and
another to unregister at once, before anything was read. The transports
here are Twisted's, except that they stay out of the reactor until they
are resumed.
"""

from __future__ import annotations

from twisted.internet import tcp


class _StartsPaused:
    """
    Registers for reading only once connected: the constructor's own
    C{startReading} (made before C{connected} is set) does nothing.
    """

    connected: int

    def startReading(self) -> None:
        if self.connected:
            super().startReading()


class PausedTCPServer(_StartsPaused, tcp.Server):
    """
    Twisted's TCP server transport, starting paused.
    """


_PAUSED: dict[type, type] = {tcp.Server: PausedTCPServer}

try:
    from twisted.internet import unix
except ImportError:
    pass
else:

    class PausedUNIXServer(_StartsPaused, unix.Server):
        """
        Twisted's UNIX server transport, starting paused.
        """

    _PAUSED[unix.Server] = PausedUNIXServer

TRANSPORTS = frozenset(_PAUSED.values())
"""
The paused transport classes, which are as spliceable as the ones they
derive from.
"""


def acceptPaused(port: object, factory: object) -> None:
    """
    Make C{port} build paused transports for C{factory}'s protocols, if it
    is a plain TCP or UNIX port serving C{factory} itself (a TLS port wraps
    the factory, and its protocol must read from the start).
    """
    paused = _PAUSED.get(getattr(port, "transport", None))
    if paused is not None and getattr(port, "factory", None) is factory:
        port.transport = paused
