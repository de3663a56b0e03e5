"""
Tests for L{socketproxyd.systemd.activation}, with real sockets placed on
consecutive fds as a launcher would.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.systemd.activation import ActivationError, adopt, inheritedSockets

START = 200


class InheritedSocketsTests(SynchronousTestCase):
    """
    L{inheritedSockets} reads and checks LISTEN_* and the fds behind them.
    """

    def place(self, *objects: socket.socket | int) -> dict[str, str]:
        """
        Put C{objects} on fds START.. and return a matching environment.
        """
        for i, obj in enumerate(objects):
            fd = obj if isinstance(obj, int) else obj.fileno()
            os.dup2(fd, START + i)
            self.addCleanup(_closeQuietly, START + i)
        return {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(len(objects))}

    def listener(self, family: int = socket.AF_INET) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        if family == socket.AF_UNIX:
            sock.bind("\0spx-unit-" + str(id(sock)))
        else:
            sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        sock.listen()
        return sock

    def read(self, environ: dict[str, str], initial: dict[str, str] | None = None):
        return inheritedSockets(environ, initial=lambda: initial or {}, start=START)

    def test_notActivated(self) -> None:
        self.assertEqual(self.read({}), [])

    def test_familiesAndDefaultNames(self) -> None:
        """
        Without LISTEN_FDNAMES every socket is named C{unknown}; the
        variables are consumed and the fds made close-on-exec.
        """
        environ = self.place(
            self.listener(), self.listener(socket.AF_INET6), self.listener(socket.AF_UNIX)
        )
        os.set_inheritable(START, True)
        found = self.read(environ)
        self.assertEqual([s.fd for s in found], [START, START + 1, START + 2])
        self.assertEqual(
            [s.family for s in found], [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX]
        )
        self.assertEqual({s.name for s in found}, {"unknown"})
        self.assertEqual(found[0].describe(), f"fd {START} (IPv4)")
        self.assertEqual(environ, {})
        self.assertFalse(os.get_inheritable(START))

    def test_names(self) -> None:
        environ = self.place(self.listener(), self.listener())
        environ["LISTEN_FDNAMES"] = "web:admin"
        self.assertEqual([s.name for s in self.read(environ)], ["web", "admin"])

    def test_initialEnvironmentFallback(self) -> None:
        """
        When os.environ has lost LISTEN_PID and LISTEN_FDS (Twisted's
        endpoints module deletes them on import), the initial environment
        is used.
        """
        initial = self.place(self.listener())
        environ = {"LISTEN_FDNAMES": "front"}
        found = self.read(environ, {**initial, "LISTEN_FDNAMES": "front"})
        self.assertEqual([(s.fd, s.name) for s in found], [(START, "front")])
        self.assertEqual(environ, {})

    def assertRejected(self, environ: dict[str, str], *words: str) -> None:
        with self.assertRaises(ActivationError) as caught:
            self.read(environ)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        for word in words:
            self.assertIn(word, message)

    def test_otherProcess(self) -> None:
        environ = self.place(self.listener())
        environ["LISTEN_PID"] = "1"
        self.assertRejected(environ, "process 1")

    def test_badVariables(self) -> None:
        pid = str(os.getpid())
        self.assertRejected({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID")
        self.assertRejected({"LISTEN_PID": pid, "LISTEN_FDS": "0"}, "LISTEN_FDS")
        self.assertRejected({"LISTEN_PID": pid, "LISTEN_FDS": "abc"}, "LISTEN_FDS")
        environ = self.place(self.listener())
        environ["LISTEN_FDNAMES"] = "a:b"
        self.assertRejected(environ, "LISTEN_FDNAMES")

    def test_seqpacketSocket(self) -> None:
        """
        A seqpacket socket is neither a stream nor a datagram socket.
        """
        seqpacket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(seqpacket.close)
        self.assertRejected(self.place(self.listener(), seqpacket), f"fd {START + 1}", "seqpacket")

    def test_notListening(self) -> None:
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        self.assertRejected(self.place(sock), f"fd {START}", "not listening")

    def test_regularFile(self) -> None:
        path = self.mktemp()
        with open(path, "w"):
            pass
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        self.assertRejected(self.place(fd), "regular file")

    def test_closedFd(self) -> None:
        environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
        _closeQuietly(START)
        self.assertRejected(environ, f"fd {START}", "not open")


class AdoptTests(SynchronousTestCase):
    """
    L{adopt} hands the fd to C{reactor.adoptStreamPort} and closes its own.
    """

    def test_adopt(self) -> None:
        reactor = MemoryReactor()
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
        os.dup2(sock.fileno(), START)
        [inherited] = inheritedSockets(environ, initial=dict, start=START)
        factory = object()
        adopt(reactor, inherited, factory)
        self.assertEqual(reactor.adoptedPorts, [(START, socket.AF_INET, factory)])
        self.assertRaises(OSError, os.fstat, START)


def _closeQuietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
