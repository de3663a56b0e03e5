"""
Harnesses of the splice path, on real socket pairs: a connection on the
splice pump driven by hand (L{SpliceHarness}), the keepalive behaviour
every pump shares, and the fixture of the splice pump tests
(L{SplicePumpTestCase}).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import cast

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.stream.connection import Connection
from socketproxyd.stream.earlyrelay import EarlyPair
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.stream.headerreader import HeaderReader
from socketproxyd.stream.splice import pipes
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.stream.splice.pump import SplicePump
from tests.support.fakes import (
    HOST,
    LINGER_RESET,
    PEER,
    FakeFDReactor,
    FakeTracker,
    RecordingConnection,
    TransportHarness,
)


class RecordingSocket(socket.socket):
    """
    A socket that remembers whether it was set to close with a reset (on
    a UNIX socket the kernel sends none, so the test asks the socket).
    """

    lingerReset = False

    def setsockopt(self, level: int, option: int, value: object, *rest: object) -> None:
        if (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.lingerReset = value == LINGER_RESET
        super().setsockopt(level, option, value, *rest)


class Outside:
    """
    The far end of one of the proxy's sockets: what it sent and received.
    """

    def __init__(self, sock: socket.socket, inside: RecordingSocket) -> None:
        self.socket = sock
        self.inside = inside
        self.received = b""
        self.eof = False
        self.closed = False

    def read(self) -> bool:
        """
        Read what has arrived; whether anything had.
        """
        if self.eof or self.closed:
            return False
        got = False
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return got
            except ConnectionResetError:
                self.eof = True
                return True
            if not data:
                self.eof = True
                return True
            self.received += data
            got = True

    def sees(self) -> str:
        if self.inside.lingerReset and self.inside.fileno() == -1:
            return "reset"
        self.read()
        return "eof" if self.eof else "open"


class SocketConnector:
    """
    Stands in for the factory's bare connector: the target is already
    connected, on C{sock}.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.attempts = 0

    def attempt(self, fallbackFactory: object, source: object = None) -> socket.socket:
        self.attempts += 1
        return self.socket


class SpliceHarness:
    """
    A connection on the splice pump between two real socket pairs (UNIX
    ones, or TCP ones on the loopback interface), the target's handed over
    by a L{SocketConnector} in the factory; the test is the reactor,
    calling C{doRead} and C{doWrite} until all is quiet.
    """

    def __init__(
        self,
        settings: ProxySettings,
        tracker: FakeTracker,
        test: SynchronousTestCase,
        tcp: bool,
        early: Callable[[socket.socket, socket.socket], EarlyPair] | None = None,
        header: bool = False,
    ) -> None:
        """
        Start the connection (after reading its client's PROXY header, with
        C{header}); or, given C{early}, which makes the early relay's pair
        of the client's and the target's inside sockets, have the factory
        adopt that pair.
        """
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.reactor = FakeFDReactor()
        self.tracker = tracker
        self.client = self._pair(test, tcp)
        self.target = self._pair(test, tcp)
        self.factory = ProxyFactory(self.reactor, parseTarget("127.0.0.1:8080"), settings, tracker)
        self.connector = self.factory.bareConnector = SocketConnector(self.target.inside)
        if early is None:
            pump = SplicePump(
                self.reactor, self.factory.sweeper, self.client.inside, settings.keepalive
            )
            self.connection = Connection(self.factory, pump, PEER, HOST)
            if header:
                self.connection.awaitHeader(HeaderReader(self.reactor, self.client.inside))
            else:
                self.connection.start()
        else:
            self.factory.adopt(early(self.client.inside, self.target.inside))
            self.connection = cast(Connection, tracker.opens[-1])
        self.settle()

    @staticmethod
    def _pair(test: SynchronousTestCase, tcp: bool) -> Outside:
        if tcp:
            listener = socket.create_server(("127.0.0.1", 0))
            test.addCleanup(listener.close)
            outside = socket.create_connection(listener.getsockname())
            plain, _ = listener.accept()
        else:
            outside, plain = socket.socketpair()
        inside = RecordingSocket(plain.family, plain.type, fileno=plain.detach())
        for sock in (outside, inside):
            sock.setblocking(False)
            test.addCleanup(sock.close)
        return Outside(outside, inside)

    def settle(self) -> None:
        """
        Make the reactor's calls for every registered reader and writer
        until they move nothing more.
        """
        for _ in range(1000):
            before = self._state()
            for reader in list(self.reactor.readers):
                if reader in self.reactor.readers:
                    reader.doRead()
            for writer in list(self.reactor.writers):
                if writer in self.reactor.writers:
                    writer.doWrite()
            if self._state() == before:
                return
        raise AssertionError("the splice pump never settles")

    def _state(self) -> tuple[object, ...]:
        connection = self.connection
        return (
            tuple(connection.counts),
            tuple(connection.flows),
            connection.closing,
            tuple((end.pending, len(end.backlog)) for end in connection.pump.ends),
            frozenset(self.reactor.readers),
            frozenset(self.reactor.writers),
        )

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.settle()

    def _send(self, outside: Outside, data: bytes) -> None:
        peer = self.target if outside is self.client else self.client
        while data:
            try:
                data = data[outside.socket.send(data) :]
            except BlockingIOError:
                peer.read()
            self.settle()

    def clientSends(self, data: bytes) -> None:
        self._send(self.client, data)

    def targetSends(self, data: bytes) -> None:
        self._send(self.target, data)

    def _eof(self, outside: Outside) -> None:
        outside.socket.shutdown(socket.SHUT_WR)
        self.settle()

    def clientEof(self) -> None:
        self._eof(self.client)

    def targetEof(self) -> None:
        self._eof(self.target)

    def _reset(self, outside: Outside) -> None:
        """
        Close C{outside} with bytes it did not read: on a UNIX socket, that
        is what resets its peer.
        """
        assert outside.socket.recv(1, socket.MSG_PEEK), "a reset needs unread bytes"
        outside.socket.close()
        outside.closed = True
        self.settle()

    def clientResets(self) -> None:
        self._reset(self.client)

    def targetResets(self) -> None:
        self._reset(self.target)

    def _received(self, outside: Outside) -> bytes:
        while outside.read():
            self.settle()
        return outside.received

    def clientReceived(self) -> bytes:
        return self._received(self.client)

    def targetReceived(self) -> bytes:
        return self._received(self.target)

    def clientSees(self) -> str:
        return self.client.sees()

    def targetSees(self) -> str:
        return self.target.sees()

    def keepalive(self) -> tuple[bool, bool]:
        return tuple(
            bool(side.inside.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
            for side in (self.client, self.target)
        )


class KeepaliveBehaviour:
    """
    Keepalive on every pump, written once; the splice pump's variant needs
    TCP sockets on the loopback interface, so it is an integration test.
    """

    def harness(self, **settings: object) -> TransportHarness | SpliceHarness:
        raise NotImplementedError

    def test_keepalive(self) -> None:
        """
        TCP keepalive is enabled on both sockets when asked for, and only
        then.
        """
        self.assertEqual(self.harness(keepalive=True).keepalive(), (True, True))
        self.assertEqual(self.harness().keepalive(), (False, False))


class SplicePumpTestCase(SynchronousTestCase):
    """
    The fixture of the splice pump tests: a pump between two socket
    pairs; C{client} and C{target} are the far ends, the pump holds the
    near ones.
    """

    def setUp(self) -> None:
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.reactor = FakeFDReactor()
        self.clock = Clock()
        self.outOfFds = 0
        self.sweeper = PipeSweeper(self.clock, outOfFds=self.countOutOfFds)
        self.client, self.clientInside = self.pair()
        self.target, self.targetInside = self.pair()
        self.pump, self.connection = self.attached(self.clientInside, self.targetInside)
        self.clientEnd, self.targetEnd = self.pump.ends

    def countOutOfFds(self) -> None:
        self.outOfFds += 1

    def pair(self) -> tuple[socket.socket, socket.socket]:
        outside, inside = socket.socketpair()
        for sock in (outside, inside):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return outside, inside

    def tcpPair(self) -> tuple[socket.socket, socket.socket]:
        """
        A connected loopback TCP pair, outside end first.
        """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        outside = socket.create_connection(server.getsockname())
        inside, _ = server.accept()
        server.close()
        for sock in (outside, inside):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return outside, inside

    def attached(
        self,
        client: socket.socket,
        target: object,
        preamble: bytes = b"",
        keepalive: bool = False,
    ) -> tuple[SplicePump, RecordingConnection]:
        pump = SplicePump(self.reactor, self.sweeper, client, keepalive)
        connection = RecordingConnection(pump)
        pump.attach(target, preamble)
        return pump, connection

    def tcpPump(self) -> tuple[socket.socket, socket.socket, SplicePump, RecordingConnection]:
        """
        A pump between two TCP pairs: the client, the target, the pump and
        its connection.
        """
        client, clientInside = self.tcpPair()
        target, targetInside = self.tcpPair()
        pump, connection = self.attached(clientInside, targetInside)
        return client, target, pump, connection

    def fillUntilBlocked(self) -> bytes:
        """
        Send from the client and have the pump read, until the target's
        socket is full and the pump stops reading the client: what the
        client sent.
        """
        self.target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        chunk = os.urandom(1 << 16)
        sent = b""
        while self.clientEnd in self.reactor.readers:
            try:
                sent += chunk[: self.client.send(chunk)]
            except BlockingIOError:
                pass
            self.clientEnd.doRead()
        return sent

    def reactorLoses(self, end: object, reason: Exception) -> None:
        """
        What Twisted's reactor does on a hang-up or error: take the socket
        out of its readers and writers, then report it lost.
        """
        self.reactor.removeReader(end)
        self.reactor.removeWriter(end)
        end.connectionLost(Failure(reason))
