# -*- test-case-name: tests.test_bareconnect -*-
"""
Connections to a literal target for the splice path: one non-blocking
C{connect} and one writability event, yielding a bare socket.

A connection that is spliced never reads or writes through a Twisted
transport on the target side, so building one (a connector, a
C{tcp.Client}, a wrapping protocol, three Deferreds, five C{epoll_ctl}
calls and two C{connect} calls per connection) is pure cost: at the
new-connection rate of a proxy, most of its cost. L{BareConnector} skips
all of it; a L{BareTarget} is the connected socket with just enough of a
relay protocol and its transport for L{socketproxyd.proxy.ServerProtocol}
to hand it to the splicer and to end it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IProtocolFactory, IReactorFDSet, IReactorTime
from twisted.python.failure import Failure

_LINGER_RESET = struct.pack("ii", 1, 0)


def resetOnClose(sock: socket.socket) -> None:
    """
    Make closing C{sock} send a TCP RST instead of a FIN, so its peer sees
    a failure rather than a normal end of stream.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


CLEAN_END = Failure(error.ConnectionDone())
"""
The reason a connection ended normally, built once and shared, as the
reactor shares its own.
"""

ABORTED = Failure(error.ConnectionAborted())
"""
The reason a connection was aborted, built once and shared.
"""

_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class BareTarget:
    """
    The target side of a spliced connection made by L{BareConnector}: the
    connected socket, standing where a L{socketproxyd.proxy.ClientProtocol}
    and its transport would, in one small object (an idle connection keeps
    it).

    It is its own transport: it never reads or writes (the splicer does);
    it closes, with a reset when aborted, and reports that to its owner
    once, as a relay protocol would.

    @ivar owner: the L{socketproxyd.proxy.ServerProtocol} it was handed to.
    @ivar peer: the other side (the owner), as for a relay protocol.
    @ivar received: bytes read from the target (the splicer counts them).
    @ivar lost: whether the socket is closed.
    """

    __slots__ = ("socket", "owner", "peer", "received", "lost")

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.owner = None
        self.peer = None
        self.received = 0
        self.lost = False

    @property
    def transport(self) -> BareTarget:
        return self

    def fileno(self) -> int:
        return self.socket.fileno()

    def getHandle(self) -> socket.socket:
        return self.socket

    def setTcpKeepAlive(self, enabled: bool) -> None:
        if self.socket.family != socket.AF_UNIX:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(enabled))

    def stopReading(self) -> None:
        """
        Nothing to stop: a bare socket is in the reactor only through the
        splicer.
        """

    stopWriting = stopReading

    def loseConnection(self) -> None:
        """
        Close the socket; the peer sees a normal end of stream.
        """
        self.connectionLost(CLEAN_END)

    def abortConnection(self) -> None:
        """
        Close the socket with a reset.
        """
        self.connectionLost(ABORTED)

    def connectionLost(self, reason: Failure) -> None:
        """
        Close the socket (with a reset unless C{reason} is a clean end) and
        tell the owner, once.
        """
        if self.lost:
            return
        self.lost = True
        if not isinstance(reason.value, error.ConnectionDone):
            resetOnClose(self.socket)
        self.socket.close()
        if self.owner is not None:
            self.owner.sideLost(self, reason)


class _PendingConnect:
    """
    A non-blocking connect in flight, a writer in the reactor until the
    socket is writable, bounded by a timer.
    """

    def __init__(
        self,
        connector: BareConnector,
        sock: socket.socket,
    ) -> None:
        self.reactor = connector.reactor
        self.socket = sock
        self.fd = sock.fileno()
        self.deferred: Deferred = Deferred(self._cancel)
        self.timer = None
        if connector.timeout is not None:
            self.timer = self.reactor.callLater(connector.timeout, self._timedOut)
        self.reactor.addWriter(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "connect"

    def doWrite(self) -> None:
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._stop()
        if code:
            self._fail(error.getConnectError((code, os.strerror(code))))
        else:
            self.deferred.callback(BareTarget(self.socket))

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw the connect fail (a hang-up or error event).
        """
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._stop()
        self._fail(error.getConnectError((code, os.strerror(code))) if code else reason.value)

    def _stop(self) -> None:
        self.reactor.removeWriter(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _fail(self, reason: BaseException) -> None:
        self.socket.close()
        self.deferred.errback(Failure(reason))

    def _timedOut(self) -> None:
        self.timer = None
        self._stop()
        self._fail(error.TimeoutError())

    def _cancel(self, deferred: Deferred) -> None:
        self._stop()
        self.socket.close()


class BareConnector:
    """
    Connects to a literal address (IPv4, IPv6 or a UNIX socket) with bare
    sockets for the splicer.

    A UNIX socket whose listener's backlog is full cannot be waited for (a
    second connect is needed once it has room), so such an attempt goes
    through C{fallback}, an ordinary Twisted endpoint for the same address,
    and gives an ordinary protocol on a Twisted transport.

    @ivar timeout: seconds an attempt may take, or C{None} for no bound.
    """

    def __init__(
        self,
        reactor: IReactorFDSet | IReactorTime,
        family: int,
        address: object,
        timeout: float | None,
        fallback: object,
    ) -> None:
        self.reactor = reactor
        self.family = family
        self.address = address
        self.timeout = timeout
        self.fallback = fallback

    def attempt(self, fallbackFactory: IProtocolFactory) -> BareTarget | Deferred:
        """
        Start connecting. A connection made at once, as it is for most
        targets on the same host, is given as the L{BareTarget} itself, so
        the connection goes on without a Deferred. Otherwise a Deferred
        fires with the L{BareTarget} (or, when the attempt goes through
        the fallback endpoint, with the protocol C{fallbackFactory}
        builds), or fails with the L{error.ConnectError} Twisted's
        endpoints would give.

        Such a target has usually accepted the connection by the time
        C{connect} returns, even when it reports the connection as in
        progress: one C{getpeername} finds that out, and saves a reactor
        registration, a wake-up and a timer.
        """
        try:
            sock = socket.socket(self.family, _NONBLOCKING_STREAM)
        except OSError as e:
            return _failed(e.errno)
        try:
            code = sock.connect_ex(self.address)
        except OSError as e:
            sock.close()
            return fail(error.getConnectError(e))
        if code == errno.EAGAIN and self.family == socket.AF_UNIX:
            sock.close()
            return self.fallback.connect(fallbackFactory)
        if code == errno.EINPROGRESS:
            try:
                sock.getpeername()
            except OSError:
                return _PendingConnect(self, sock).deferred
            code = 0
        if code == 0:
            return BareTarget(sock)
        sock.close()
        return _failed(code)


def _failed(code: int) -> Deferred:
    return fail(error.getConnectError((code, os.strerror(code))))
