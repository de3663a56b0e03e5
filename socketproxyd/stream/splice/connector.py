# -*- test-case-name: tests.integration.test_bareconnect -*-
"""
Connections to a literal target for the splice pump: one non-blocking
C{connect} and, unless it completes at once, one writability event,
yielding a bare socket.

A spliced connection never reads or writes through a Twisted transport on
the target side, so building one (a connector, a C{tcp.Client}, a wrapping
protocol, three Deferreds, five C{epoll_ctl} calls and two C{connect}
calls per connection) is pure cost: at the new-connection rate of a proxy,
most of its cost. L{BareConnector} skips all of it. The connection that
asked bounds the attempt with its connect timeout, by cancelling it.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IProtocolFactory,
    IReactorFDSet,
    IStreamClientEndpoint,
    IWriteDescriptor,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from socketproxyd.addresses import RawAddress
from socketproxyd.config.target import Target
from socketproxyd.transparent import bindTransparent

_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


@implementer(IWriteDescriptor)
class _PendingConnect:
    """
    A non-blocking connect in flight: a writer in the reactor until the
    socket is writable.
    """

    def __init__(self, reactor: IReactorFDSet, sock: socket.socket) -> None:
        self.reactor = reactor
        self.socket = sock
        self.fd = sock.fileno()
        self.deferred: Deferred = Deferred(self._cancel)
        reactor.addWriter(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "connect"

    def doWrite(self) -> None:
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.reactor.removeWriter(self)
        if code:
            self._fail(_refusal(code))
        else:
            self.deferred.callback(self.socket)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw the connect fail (a hang-up or error event).
        """
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.reactor.removeWriter(self)
        self._fail(_refusal(code) if code else reason)

    def _fail(self, reason: Failure) -> None:
        self.socket.close()
        self.deferred.errback(reason)

    def _cancel(self, deferred: Deferred) -> None:
        self.reactor.removeWriter(self)
        self.socket.close()


class BareConnector:
    """
    Connects to a literal address (IPv4, IPv6 or a UNIX socket) with bare
    sockets for the splice pump.

    A UNIX socket whose listener's backlog is full cannot be waited for (a
    second connect is needed once it has room), so such an attempt goes
    through C{fallback}, an ordinary Twisted endpoint for the same address,
    and gives an ordinary protocol on a Twisted transport.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        family: int,
        address: RawAddress,
        fallback: IStreamClientEndpoint,
    ) -> None:
        self.reactor = reactor
        self.family = family
        self.address = address
        self.fallback = fallback

    @classmethod
    def forTarget(
        cls, reactor: IReactorFDSet, target: Target, fallback: IStreamClientEndpoint
    ) -> BareConnector | None:
        """
        A connector for C{target}, or C{None} for a name (resolving and
        trying several addresses is left to Twisted's C{HostnameEndpoint}).
        The socket address is worked out once, here; an address the system
        cannot use is left to the ordinary endpoint, which reports it on
        each connect.

        @param fallback: the target's ordinary endpoint, for what a bare
            socket cannot do.
        """
        try:
            family, address = target.socketAddress(socket.SOCK_STREAM)
        except ValueError:
            return None
        return cls(reactor, family, address, fallback)

    def attempt(
        self, fallbackFactory: IProtocolFactory, source: RawAddress | None = None
    ) -> socket.socket | Deferred:
        """
        Start connecting. A connection made at once, as it is for most
        targets on the same host, is given as the connected socket itself,
        so the connection goes on without a Deferred. Otherwise a Deferred
        fires with the socket (or, when the attempt goes through the
        fallback endpoint, with the protocol C{fallbackFactory} builds), or
        fails with the L{error.ConnectError} Twisted's endpoints would give.

        Such a target has usually accepted the connection by the time
        C{connect} returns, even when it reports the connection as in
        progress: one C{getpeername} finds that out, and saves a reactor
        registration and a wake-up.

        @param source: the address to connect from (C{--transparent}: a
            client's own, which need not be one of this host's).
        """
        try:
            sock = socket.socket(self.family, _NONBLOCKING_STREAM)
        except OSError as e:
            return fail(error.getConnectError(e))
        try:
            if source is not None:
                bindTransparent(sock, source)
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
                return _PendingConnect(self.reactor, sock).deferred
            code = 0
        if code == 0:
            return sock
        sock.close()
        return fail(_refusal(code))


def _refusal(code: int) -> Failure:
    """
    The failure Twisted's endpoints give for a connect that failed with
    errno C{code}.
    """
    return Failure(error.getConnectError((code, os.strerror(code))))
