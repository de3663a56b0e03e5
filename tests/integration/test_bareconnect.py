"""
Tests, on real sockets, of L{socketproxyd.stream.splice.connector}: real loopback and UNIX sockets,
and a fake reactor whose writability events are delivered by hand once
C{select} says the socket is writable.
"""

from __future__ import annotations

import errno
import os
import select
import socket

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd.stream.splice.connector import BareConnector, _PendingConnect
from socketproxyd.stream.splice.pump import resetOnClose
from tests.support.fakes import FakeFDReactor


def openFds() -> int:
    return len(os.listdir("/proc/self/fd"))


class RecordingEndpoint:
    """
    Stands in for the fallback endpoint and records that it was used.
    """

    def __init__(self) -> None:
        self.factories: list[object] = []

    def connect(self, factory: object) -> Deferred:
        self.factories.append(factory)
        return succeed("fallback")


class BareConnectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeFDReactor()
        self.factory = Factory.forProtocol(Protocol)
        self.fallback = RecordingEndpoint()
        self.fds = openFds()

    def listener(self) -> socket.socket:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        self.addCleanup(server.close)
        return server

    def endpoint(self, address: object, family: int = socket.AF_INET) -> BareConnector:
        return BareConnector(self.reactor, family, address, self.fallback)

    def connect(self, connector: BareConnector) -> Deferred:
        """
        Start C{connector}'s attempt; its result as a Deferred either way.
        """
        result = connector.attempt(self.factory)
        return succeed(result) if isinstance(result, socket.socket) else result

    def pending(self) -> object:
        (writer,) = self.reactor.writers
        return writer

    def deliverWritable(self) -> None:
        writer = self.pending()
        _, writable, _ = select.select([], [writer.fileno()], [], 10)
        self.assertEqual(writable, [writer.fileno()])
        writer.doWrite()

    def result(self, deferred: Deferred) -> object:
        results: list[object] = []
        deferred.addBoth(results.append)
        self.assertEqual(len(results), 1)
        return results[0]

    def fullListener(self) -> socket.socket:
        """
        A listener whose backlog is full, so a new connect stays in
        progress (its SYNs are dropped).
        """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        self.addCleanup(server.close)
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            self.addCleanup(filler.close)
            filler.connect_ex(server.getsockname())
        return server

    def pendingConnect(self) -> Deferred:
        deferred = self.connect(self.endpoint(self.fullListener().getsockname()))
        if not self.reactor.writers:
            raise SkipTest("the connect completed although the backlog was full")
        self.fds = openFds() - 1
        return deferred

    def test_connects(self) -> None:
        """
        A connect to a listening socket gives a connected, non-blocking
        socket; on the same host that is usually at once, without a
        registration or a timer.
        """
        server = self.listener()
        deferred = self.connect(self.endpoint(server.getsockname()))
        if self.reactor.writers:
            self.deliverWritable()
        target = self.result(deferred)
        self.assertIsInstance(target, socket.socket)
        self.assertEqual(target.family, socket.AF_INET)
        self.assertFalse(target.getblocking())
        self.assertEqual(target.getpeername(), server.getsockname())
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        target.sendall(b"hello")
        self.assertEqual(accepted.recv(10), b"hello")
        target.close()
        self.assertEqual(accepted.recv(10), b"")
        self.assertEqual(openFds(), self.fds + 2)

    def test_attemptGivesSocketItself(self) -> None:
        """
        L{BareConnector.attempt} gives a connection made at once as the
        connected socket itself, with nothing in the reactor; one still in
        progress as a Deferred, with a writer waiting for it.
        """
        server = self.listener()
        attempt = self.endpoint(server.getsockname()).attempt(self.factory)
        if isinstance(attempt, Deferred):
            raise SkipTest("the connect did not complete at once")
        self.assertIsInstance(attempt, socket.socket)
        self.assertEqual(attempt.getpeername(), server.getsockname())
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        attempt.close()
        pending = self.endpoint(self.fullListener().getsockname()).attempt(self.factory)
        if not self.reactor.writers:
            raise SkipTest("the connect completed although the backlog was full")
        self.assertIsInstance(pending, Deferred)
        pending.cancel()
        self.failureResultOf(pending, CancelledError)
        self.assertEqual(self.reactor.writers, set())

    def test_completesOnWritable(self) -> None:
        """
        A connect in progress waits as a writer, without a timer of its
        own, and completes on the writability event: the writer is gone
        and the Deferred fires with the connected socket.
        """
        server = self.listener()
        sock = socket.create_connection(server.getsockname())
        self.addCleanup(sock.close)
        pending = _PendingConnect(self.reactor, sock)
        self.assertEqual(self.reactor.writers, {pending})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        pending.doWrite()
        self.assertIs(self.result(pending.deferred), sock)
        self.assertNotEqual(sock.fileno(), -1)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))

    def test_refused(self) -> None:
        """
        A refused connect fails like Twisted's endpoints do, and its socket
        is closed.
        """
        server = self.listener()
        address = server.getsockname()
        server.close()
        deferred = self.connect(self.endpoint(address))
        if self.reactor.writers:
            self.deliverWritable()
        failure = self.result(deferred)
        self.assertIsInstance(failure.value, error.ConnectionRefusedError)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        self.assertEqual(openFds(), self.fds)

    def test_hangupReported(self) -> None:
        """
        The reactor's hang-up report for a failed connect fails the attempt
        with the socket's error.
        """
        server = self.listener()
        address = server.getsockname()
        server.close()
        deferred = self.connect(self.endpoint(address))
        if not self.reactor.writers:
            raise SkipTest("the refusal was reported at once")
        writer = self.pending()
        select.select([], [writer.fileno()], [], 10)
        self.reactor.removeWriter(writer)
        writer.connectionLost(Failure(error.ConnectionLost()))
        self.assertIsInstance(self.result(deferred).value, error.ConnectionRefusedError)
        self.assertEqual(openFds(), self.fds)

    def test_waitsUntilCancelled(self) -> None:
        """
        A pending attempt has no timeout of its own (its connection bounds
        it): it waits, its writer registered and its socket open, however
        long no writability event comes; cancelling it, as the connection
        does at its connect timeout, removes the writer and closes the
        socket.
        """
        deferred = self.pendingConnect()
        writer = self.pending()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(3600)
        self.assertNoResult(deferred)
        self.assertEqual(self.reactor.writers, {writer})
        self.assertEqual(openFds(), self.fds + 1)
        deferred.cancel()
        self.assertIsInstance(self.result(deferred).value, CancelledError)
        self.assertEqual(self.reactor.writers, set())
        self.assertEqual(writer.socket.fileno(), -1)
        self.assertEqual(openFds(), self.fds)

    def test_cancel(self) -> None:
        """
        Cancelling fails the attempt with L{CancelledError}, takes its
        writer out of the reactor and closes its socket.
        """
        deferred = self.pendingConnect()
        writer = self.pending()
        deferred.cancel()
        self.assertIsInstance(self.result(deferred).value, CancelledError)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        self.assertEqual(writer.socket.fileno(), -1)
        self.assertEqual(openFds(), self.fds)

    def unixListener(self, backlog: int) -> tuple[str, socket.socket]:
        path = self.mktemp()
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(backlog)
        self.addCleanup(server.close)
        return path, server

    def test_unixConnectsAtOnce(self) -> None:
        """
        A UNIX socket with room in its backlog is connected by the connect
        call itself, given as the socket: no reactor event, no timer.
        """
        path, server = self.unixListener(8)
        attempt = self.endpoint(path, socket.AF_UNIX).attempt(self.factory)
        self.assertIsInstance(attempt, socket.socket)
        self.addCleanup(attempt.close)
        self.assertEqual(attempt.family, socket.AF_UNIX)
        self.assertEqual(attempt.getpeername(), path)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        attempt.sendall(b"hello")
        self.assertEqual(accepted.recv(10), b"hello")

    def test_unixFullBacklogFallsBack(self) -> None:
        """
        A UNIX socket whose backlog is full goes through the fallback
        endpoint, which can wait for room; the bare socket is closed.
        """
        path, _ = self.unixListener(0)
        waiting = []
        for _ in range(16):
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            self.addCleanup(client.close)
            waiting.append(client)
            if client.connect_ex(path) == errno.EAGAIN:
                break
        else:
            raise SkipTest("this kernel never reports a full UNIX backlog")
        fds = openFds()
        deferred = self.connect(self.endpoint(path, socket.AF_UNIX))
        self.assertEqual(self.result(deferred), "fallback")
        self.assertEqual(self.fallback.factories, [self.factory])
        self.assertEqual(openFds(), fds)

    def test_missingUnixPath(self) -> None:
        """
        An immediate failure fails the Deferred with the OS error and leaks
        no socket.
        """
        deferred = self.connect(self.endpoint(self.mktemp(), socket.AF_UNIX))
        failure = self.result(deferred)
        self.assertIsInstance(failure.value, error.ConnectError)
        self.assertEqual(failure.value.osError, errno.ENOENT)
        self.assertEqual(openFds(), self.fds)

    def test_unusableAddress(self) -> None:
        """
        An address C{connect} rejects outright fails the attempt without
        an exception escaping and without leaking the socket.
        """
        deferred = self.connect(self.endpoint("/" + "x" * 200, socket.AF_UNIX))
        self.assertIsInstance(self.result(deferred).value, error.ConnectError)
        self.assertEqual(openFds(), self.fds)


class ResetOnCloseTests(SynchronousTestCase):
    def tcpPair(self) -> tuple[socket.socket, socket.socket]:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        self.addCleanup(server.close)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        return client, accepted

    def test_closeResets(self) -> None:
        """
        Closing a TCP socket after L{resetOnClose} reaches its peer as a
        reset.
        """
        client, accepted = self.tcpPair()
        resetOnClose(client)
        client.close()
        self.assertRaises(ConnectionResetError, accepted.recv, 10)

    def test_closedSocket(self) -> None:
        """
        L{resetOnClose} on a socket already closed does nothing and raises
        nothing (an abort after a close).
        """
        client, accepted = self.tcpPair()
        client.close()
        resetOnClose(client)
        self.assertEqual(accepted.recv(10), b"")
