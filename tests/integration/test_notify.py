"""
Tests, on real sockets, of L{socketproxyd.systemd.notify} with a real datagram socket and a
L{Clock} for the watchdog.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.systemd.notify import Notifier
from tests.support.sockets import unixPath


class NotifierTests(SynchronousTestCase):
    def listener(self) -> tuple[socket.socket, str]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        path = unixPath(self, "notify")
        sock.bind(path)
        sock.setblocking(False)
        return sock, path

    def received(self, sock: socket.socket) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    def test_withoutNotifySocket(self) -> None:
        """
        Without NOTIFY_SOCKET nothing is sent and nothing fails.
        """
        notifier = Notifier(Clock(), {})
        notifier.ready("x")
        notifier.startWatchdog()
        self.assertIsNone(notifier.address)

    def test_messages(self) -> None:
        sock, path = self.listener()
        notifier = Notifier(Clock(), {"NOTIFY_SOCKET": path})
        self.addCleanup(notifier.close)
        notifier.ready("0 connections")
        notifier.status("1 connections")
        notifier.stopping()
        self.assertEqual(
            self.received(sock),
            ["READY=1\nSTATUS=0 connections", "STATUS=1 connections", "STOPPING=1"],
        )

    def test_watchdogHalfInterval(self) -> None:
        sock, path = self.listener()
        clock = Clock()
        notifier = Notifier(
            clock,
            {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())},
        )
        self.addCleanup(notifier.close)
        notifier.startWatchdog()
        self.assertEqual(self.received(sock), ["WATCHDOG=1"])
        clock.advance(0.999)
        self.assertEqual(self.received(sock), [])
        clock.advance(0.001)
        self.assertEqual(self.received(sock), ["WATCHDOG=1"])
        notifier.stopWatchdog()
        clock.advance(5)
        self.assertEqual(self.received(sock), [])

    def test_watchdogOfAnotherProcess(self) -> None:
        notifier = Notifier(
            Clock(), {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
        )
        self.assertIsNone(notifier.watchdogInterval())

    def test_unreachableSocket(self) -> None:
        """
        A NOTIFY_SOCKET that cannot be reached is logged once, never raised.
        """
        notifier = Notifier(Clock(), {"NOTIFY_SOCKET": unixPath(self, "absent")})
        self.addCleanup(notifier.close)
        notifier.ready("x")
        notifier.stopping()
        self.assertTrue(notifier._failed)
