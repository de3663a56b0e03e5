# -*- test-case-name: tests.unit.test_headerreader -*-
"""
Reading the PROXY header a client sends first (C{--accept-proxy-protocol}),
before its connection to the target begins.

A L{HeaderReader} stands in the reactor for the client's socket until the
header is complete. It reads only the header's own bytes: it peeks at what
has arrived, asks L{socketproxyd.proxyheader.parseHeader} how much of it is
header, and takes exactly that off the socket, so what the client sent
after the header stays in the socket for the splice pump, which moves it
to the target as any other byte. Bytes peeked at and found to be header
are taken at once (so a socket never stays readable with nothing taken),
and at most L{socketproxyd.proxyheader.MAX_HEADER} of them are ever kept.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from socketproxyd.proxyheader import MAX_HEADER, HeaderError, ReceivedHeader, parseHeader


@implementer(IReadDescriptor)
class HeaderReader:
    """
    Reads one client's PROXY header, then reports it to C{received}, or
    why there is none to C{refused}; either once, and only while running.
    """

    def __init__(self, reactor: IReactorFDSet, sock: socket.socket) -> None:
        self.reactor = reactor
        self.socket = sock
        self.fd = sock.fileno()
        self.kept = b""
        self.received: Callable[[ReceivedHeader], None] | None = None
        self.refused: Callable[[str], None] | None = None

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "header"

    def start(
        self, received: Callable[[ReceivedHeader], None], refused: Callable[[str], None]
    ) -> None:
        """
        Read the header as it arrives.
        """
        self.received, self.refused = received, refused
        self.reactor.addReader(self)
        self.doRead()

    def stop(self) -> None:
        """
        Read no more, and report nothing.
        """
        if self.received is not None:
            self.received = self.refused = None
            self.reactor.removeReader(self)

    def doRead(self) -> None:
        try:
            arrived = self.socket.recv(MAX_HEADER - len(self.kept), socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as e:
            self._refuse(f"the client failed ({e.strerror})")
            return
        if not arrived:
            self._refuse("the client ended before its header did")
            return
        try:
            parsed = parseHeader(self.kept + arrived)
        except HeaderError as e:
            self._refuse(str(e))
            return
        if isinstance(parsed, int) and len(self.kept) + len(arrived) >= MAX_HEADER:
            self._refuse(f"more than {MAX_HEADER} bytes")
            return
        header = len(arrived) if isinstance(parsed, int) else parsed.length - len(self.kept)
        try:
            self.kept += self.socket.recv(header)
        except OSError as e:
            self._refuse(f"the client failed ({e.strerror})")
            return
        if isinstance(parsed, ReceivedHeader) and len(self.kept) == parsed.length:
            done = self.received
            self.stop()
            if done is not None:
                done(parsed)

    def _refuse(self, why: str) -> None:
        refused = self.refused
        self.stop()
        if refused is not None:
            refused(why)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw a hang-up or error on the socket.
        """
        self._refuse("the client ended before its header did")
