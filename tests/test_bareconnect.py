"""
Unit tests for L{socketproxyd.bareconnect}: real loopback and UNIX sockets,
a fake reactor whose writability events are delivered by hand once
C{select} says the socket is writable, and a clock for the timeout.
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

from socketproxyd.bareconnect import BareConnector, BareTarget, _PendingConnect

from .fakes import FakeFDReactor


def openFds() -> int:
    return len(os.listdir("/proc/self/fd"))


class RecordingOwner:
    """
    Stands in for the server protocol a L{BareTarget} reports its end to.
    """

    def __init__(self) -> None:
        self.reasons: list[Failure] = []

    def sideLost(self, side: object, reason: Failure) -> None:
        self.reasons.append(reason)


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
        return BareConnector(self.reactor, family, address, 5.0, self.fallback)

    def connect(self, connector: BareConnector) -> Deferred:
        """
        Start C{connector}'s attempt; its result as a Deferred either way.
        """
        result = connector.attempt(self.factory)
        return succeed(result) if isinstance(result, BareTarget) else result

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
        A connect to a listening socket gives a connected L{BareTarget}; on
        the same host that is usually at once, without a registration or a
        timer.
        """
        server = self.listener()
        deferred = self.connect(self.endpoint(server.getsockname()))
        if self.reactor.writers:
            self.deliverWritable()
        target = self.result(deferred)
        self.assertIsInstance(target, BareTarget)
        self.assertIs(target.transport, target)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        target.socket.sendall(b"hello")
        self.assertEqual(accepted.recv(10), b"hello")
        target.transport.loseConnection()
        self.assertEqual(accepted.recv(10), b"")
        self.assertEqual(openFds(), self.fds + 2)

    def test_attemptGivesTargetItself(self) -> None:
        """
        L{BareConnector.attempt} gives a connection made at once as the
        L{BareTarget} itself, with nothing in the reactor; one still in
        progress as a Deferred, with a writer waiting for it.
        """
        server = self.listener()
        attempt = self.endpoint(server.getsockname()).attempt(self.factory)
        if isinstance(attempt, Deferred):
            raise SkipTest("the connect did not complete at once")
        self.assertIsInstance(attempt, BareTarget)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        attempt.loseConnection()
        pending = self.endpoint(self.fullListener().getsockname()).attempt(self.factory)
        if not self.reactor.writers:
            raise SkipTest("the connect completed although the backlog was full")
        self.assertIsInstance(pending, Deferred)
        pending.cancel()
        self.failureResultOf(pending, CancelledError)
        self.assertEqual(self.reactor.writers, set())

    def test_completesOnWritable(self) -> None:
        """
        A connect in progress completes on the writability event: the
        writer and the timer are gone and the target is connected.
        """
        server = self.listener()
        sock = socket.create_connection(server.getsockname())
        endpoint = self.endpoint(server.getsockname())
        pending = _PendingConnect(endpoint, sock)
        self.assertEqual(self.reactor.writers, {pending})
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        pending.doWrite()
        target = self.result(pending.deferred)
        self.assertIs(target.socket, sock)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        target.loseConnection()

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

    def test_timeout(self) -> None:
        """
        No writability event within the timeout: the attempt fails with
        L{error.TimeoutError} and its socket is closed.
        """
        deferred = self.pendingConnect()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(4.9)
        self.assertNoResult(deferred)
        self.reactor.advance(0.2)
        self.assertIsInstance(self.result(deferred).value, error.TimeoutError)
        self.assertEqual(self.reactor.writers, set())
        self.assertEqual(openFds(), self.fds)

    def test_cancel(self) -> None:
        """
        Cancelling stops the attempt, its timer and its socket.
        """
        deferred = self.pendingConnect()
        deferred.cancel()
        self.assertIsInstance(self.result(deferred).value, CancelledError)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        self.assertEqual(openFds(), self.fds)

    def unixListener(self, backlog: int) -> str:
        path = self.mktemp()
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(backlog)
        self.addCleanup(server.close)
        return path

    def test_unixConnectsAtOnce(self) -> None:
        """
        A UNIX socket with room in its backlog is connected by the connect
        call itself: no reactor event, no timer.
        """
        path = self.unixListener(8)
        deferred = self.connect(self.endpoint(path, socket.AF_UNIX))
        target = self.result(deferred)
        self.assertIsInstance(target, BareTarget)
        self.assertEqual((self.reactor.writers, self.reactor.getDelayedCalls()), (set(), []))
        owner = RecordingOwner()
        target.owner = owner
        target.abortConnection()
        target.abortConnection()
        self.assertEqual(len(owner.reasons), 1)
        self.assertIsInstance(owner.reasons[0].value, error.ConnectionAborted)
        self.assertTrue(target.lost)

    def test_unixFullBacklogFallsBack(self) -> None:
        """
        A UNIX socket whose backlog is full goes through the fallback
        endpoint, which can wait for room; the bare socket is closed.
        """
        path = self.unixListener(0)
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


class BareTargetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.outside, inside = socket.socketpair()
        self.addCleanup(self.outside.close)
        self.owner = RecordingOwner()
        self.transport = BareTarget(inside)
        self.transport.owner = self.owner

    def test_loseConnection(self) -> None:
        """
        A normal close: the peer reads an end of stream, the owner hears
        of it once.
        """
        self.transport.loseConnection()
        self.transport.loseConnection()
        self.assertEqual(self.outside.recv(10), b"")
        self.assertEqual(len(self.owner.reasons), 1)
        self.assertIsInstance(self.owner.reasons[0].value, error.ConnectionDone)

    def test_abortResets(self) -> None:
        """
        An abort on a TCP socket reaches the peer as a reset.
        """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        self.addCleanup(server.close)
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        transport = BareTarget(client)
        transport.owner = self.owner
        transport.setTcpKeepAlive(True)
        self.assertEqual(client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        transport.abortConnection()
        self.assertRaises(ConnectionResetError, accepted.recv, 10)
        self.assertIsInstance(self.owner.reasons[0].value, error.ConnectionAborted)
