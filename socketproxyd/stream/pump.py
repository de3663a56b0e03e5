"""
What a data path is to a L{socketproxyd.stream.connection.Connection}: a L{Pump}
moves the bytes of the two directions (L{socketproxyd.events.UPSTREAM} and
L{socketproxyd.events.DOWNSTREAM}), reports what happened and carries out
what the connection decides; each direction is a L{Flow}.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

    from twisted.internet.interfaces import IAddress
    from twisted.internet.protocol import Protocol as TwistedProtocol

    from socketproxyd.stream.connection import Connection


class Flow(IntEnum):
    """
    The state of one direction of a connection.
    """

    OPEN = 0
    ENDED = 1
    SHUT = 2


class Pump(Protocol):
    """
    A data path: moves a connection's bytes and carries out what the
    L{Connection} decides. Every report goes to C{pump.connection}.

    @ivar takesSockets: whether L{attach} takes a bare connected socket as
        well as a protocol on a Twisted transport.
    """

    connection: Connection
    takesSockets: bool

    def clientAddress(self) -> IAddress | None:
        """
        The client's address, for a warning about it.
        """

    def attach(self, target: socket.socket | TwistedProtocol, preamble: bytes) -> None:
        """
        The target is connected (a socket, or a protocol on a Twisted
        transport): send C{preamble} to it, then move bytes both ways.
        """

    def adopt(
        self, target: socket.socket, backlogs: Sequence[bytes], ended: Sequence[bool]
    ) -> None:
        """
        Move bytes both ways between the client and C{target} (connected),
        for a pair that carries state from before (see
        L{Connection.adopt}): by direction, bytes read and not yet sent,
        sent first, and whether the source ended (it is not read again).
        Only pumps that take sockets adopt.
        """

    def shutdownWrite(self, direction: int) -> None:
        """
        C{direction}'s source has ended: once what is in flight is out,
        shut down writing on its destination and report C{writeShut}.
        """

    def close(self) -> None:
        """
        Close both sides normally; report C{closed} once they are.
        """

    def abort(self) -> None:
        """
        Close both sides at once with a reset; report C{closed} once they
        are.
        """
