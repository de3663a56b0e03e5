"""
Tests, on real sockets, of L{socketproxyd.stream.acceptor}: accepting no more clients than
there is room for, and pausing instead of failing when descriptors run out.
"""

from __future__ import annotations

import errno
import os
import resource
import socket

from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socketproxyd.stream.acceptor import Acceptor, adoptable
from tests.support.fakes import FakeFDReactor, FakeTracker


class FakePort:
    """
    What an acceptor uses of a Twisted port: its socket, and taking it out
    of the reactor.
    """

    def __init__(self, sock: object) -> None:
        self.socket = sock
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


class FailingListener:
    """
    A listening socket whose accept fails with C{errors}, in turn.
    """

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def fileno(self) -> int:
        return 99

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        raise BlockingIOError(errno.EAGAIN, "again")


class AcceptorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeFDReactor()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(self.listener.close)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.accepted: list[socket.socket] = []

    def acceptor(self, room: int, listener: object = None) -> tuple[Acceptor, FakeTracker]:
        admission = FakeTracker(room)
        port = FakePort(listener if listener is not None else self.listener)
        acceptor = Acceptor(self.reactor, port, admission, self.record)
        self.assertFalse(port.reading)
        return acceptor, admission

    def record(self, sock: socket.socket, address: object) -> None:
        self.addCleanup(sock.close)
        self.accepted.append(sock)

    def clients(self, count: int) -> list[socket.socket]:
        result = []
        for _ in range(count):
            client = socket.create_connection(self.listener.getsockname())
            self.addCleanup(client.close)
            result.append(client)
        return result

    def test_takesThePortsPlace(self) -> None:
        """
        The port leaves the reactor; the acceptor reads its socket instead,
        and stops on request.
        """
        acceptor, _ = self.acceptor(1)
        self.assertEqual(acceptor.fileno(), self.listener.fileno())
        acceptor.startReading()
        self.assertEqual(self.reactor.readers, {acceptor})
        acceptor.stopReading()
        self.assertEqual(self.reactor.readers, set())

    def test_noMoreThanRoom(self) -> None:
        """
        One wake-up accepts at most the room there is; the other clients
        stay in the backlog, connected, until there is room again. A
        wake-up with no room at all says so (the acceptor would otherwise
        be woken again at once, a busy loop).
        """
        clients = self.clients(5)
        acceptor, admission = self.acceptor(3)
        acceptor.doRead()
        self.assertEqual(len(self.accepted), 3)
        admission.free = 0
        acceptor.doRead()
        self.assertEqual((len(self.accepted), admission.exhausted), (3, 1))
        admission.free = 10
        acceptor.doRead()
        self.assertEqual(len(self.accepted), 5)
        for sock in self.accepted:
            self.assertEqual(sock.gettimeout(), 0.0)
        for i, (client, sock) in enumerate(zip(clients, self.accepted, strict=True)):
            client.sendall(b"%d" % i)
            sock.setblocking(True)
            self.assertEqual(sock.recv(8), b"%d" % i)

    def test_descriptorErrorsPause(self) -> None:
        """
        EMFILE, ENFILE, ENOBUFS and ENOMEM stop the wake-up and are
        reported, once each; nothing is accepted.
        """
        for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            listener = FailingListener(code)
            acceptor, admission = self.acceptor(5, listener)
            acceptor.doRead()
            self.assertEqual((admission.exhausted, listener.calls), (1, 1))
        self.assertEqual(self.accepted, [])

    def test_clientGoneGoesOn(self) -> None:
        """
        A client that gave up before it was accepted does not stop the
        wake-up.
        """
        listener = FailingListener(errno.ECONNABORTED, errno.EPERM)
        acceptor, admission = self.acceptor(5, listener)
        acceptor.doRead()
        self.assertEqual((admission.exhausted, listener.calls), (0, 3))

    def test_realEmfileLeavesClientWaiting(self) -> None:
        """
        With the soft RLIMIT_NOFILE leaving no descriptor free, the client
        is not accepted (nor closed): it is served once the limit is back.
        """
        [client] = self.clients(1)
        acceptor, admission = self.acceptor(5)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest = os.dup(0)
        os.close(lowest)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
        try:
            acceptor.doRead()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertEqual((admission.exhausted, self.accepted), (1, []))
        acceptor.doRead()
        self.assertEqual(len(self.accepted), 1)
        client.sendall(b"still here")
        self.accepted[0].setblocking(True)
        self.assertEqual(self.accepted[0].recv(32), b"still here")

    def test_handOverFailureGoesOn(self) -> None:
        """
        A client that fails while it is handed over (a reset before Twisted
        could adopt it) is closed, and the acceptor goes on.
        """
        self.clients(3)
        admission = FakeTracker(5)
        calls = []

        def failFirst(sock: socket.socket, address: object) -> None:
            calls.append(sock)
            if len(calls) == 1:
                raise OSError(errno.ENOTCONN, "gone")
            self.record(sock, address)

        acceptor = Acceptor(self.reactor, FakePort(self.listener), admission, failFirst)
        acceptor.doRead()
        self.assertEqual(len(calls), 3)
        self.assertEqual(calls[0].fileno(), -1)
        self.assertEqual((len(self.accepted), admission.exhausted), (2, 0))


class AdoptableTests(TestCase):
    def test_plainPortsOfTheFactory(self) -> None:
        """
        Plain TCP and UNIX ports serving the factory itself are taken over;
        a port serving another factory (a TLS wrapper) is not.
        """
        from twisted.internet import reactor

        factory = Factory.forProtocol(Protocol)
        other = Factory.forProtocol(Protocol)
        tcpPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(tcpPort.stopListening)
        unixPort = reactor.listenUNIX(self.mktemp(), factory)
        self.addCleanup(unixPort.stopListening)
        otherPort = reactor.listenTCP(0, other, interface="127.0.0.1")
        self.addCleanup(otherPort.stopListening)
        self.assertTrue(adoptable(tcpPort, factory))
        self.assertTrue(adoptable(unixPort, factory))
        self.assertFalse(adoptable(otherPort, factory))
        self.assertFalse(adoptable(object(), factory))


class TwistedPortTests(TestCase):
    """
    What the acceptor relies on in Twisted's ports, checked on real ones so
    that a Twisted release that changes it fails here, loudly.
    """

    def test_portsSocketIsItsListener(self) -> None:
        """
        A TCP and a UNIX port expose their listening socket as C{socket},
        the same descriptor as C{fileno()}; taking it over removes the port
        from the reactor, and C{stopListening} still closes it.
        """
        from twisted.internet import reactor

        factory = Factory.forProtocol(Protocol)
        ports = [
            reactor.listenTCP(0, factory, interface="127.0.0.1"),
            reactor.listenUNIX(self.mktemp(), factory),
        ]
        fake = FakeFDReactor()
        for port in ports:
            self.addCleanup(port.stopListening)
            self.assertIsInstance(port.socket, socket.socket)
            self.assertEqual(port.socket.fileno(), port.fileno())
            self.assertIn(port, reactor.getReaders())
            acceptor = Acceptor(fake, port, FakeTracker(1), lambda sock, address: None)
            self.assertNotIn(port, reactor.getReaders())
            self.assertEqual(acceptor.fileno(), port.fileno())
