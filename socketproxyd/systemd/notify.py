# -*- test-case-name: tests.integration.test_notify -*-
"""
sd_notify(3): tell the service manager we are ready, what we are doing,
that we are stopping, and that we are alive (the watchdog).

The protocol is one datagram per message on the AF_UNIX socket named by
C{NOTIFY_SOCKET}; systemd documents it as a stable interface, so it is
written here rather than pulled in with libsystemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from socketproxyd.logs import observer


class Notifier:
    """
    Sends sd_notify messages; does nothing when C{NOTIFY_SOCKET} is unset.

    @ivar address: where messages go (abstract names start with NUL), or
        L{None}.
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: IReactorTime, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.reactor = reactor
        self.environ = environ
        path = environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self._socket: socket.socket | None = None
        self._watchdog: LoopingCall | None = None
        self._failed = False

    def send(self, *fields: str) -> None:
        """
        Send one message made of C{KEY=VALUE} fields; a failure is logged
        once and never stops the proxy.
        """
        if self.address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                self.log.warn(
                    "Cannot notify the service manager at {address}: {error}",
                    address=self.environ.get("NOTIFY_SOCKET"),
                    error=e.strerror,
                )

    def ready(self, status: str) -> None:
        """
        Every listener is open.
        """
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """
        A new status line for C{systemctl status}.
        """
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        """
        The proxy has begun to stop.
        """
        self.send("STOPPING=1")

    def watchdogInterval(self) -> float | None:
        """
        Seconds between C{WATCHDOG=1} pings: half of C{WATCHDOG_USEC}, when
        it is set for this process; else L{None}.
        """
        usec = self.environ.get("WATCHDOG_USEC", "")
        pid = self.environ.get("WATCHDOG_PID", "")
        if self.address is None or not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 2e6

    def startWatchdog(self) -> None:
        """
        Ping the watchdog at half its interval until L{stopWatchdog}.
        """
        interval = self.watchdogInterval()
        if interval is None or self._watchdog is not None:
            return
        self._watchdog = LoopingCall(self.send, "WATCHDOG=1")
        self._watchdog.clock = self.reactor
        self._watchdog.start(interval, now=True)

    def stopWatchdog(self) -> None:
        """
        Stop pinging the watchdog.
        """
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def close(self) -> None:
        """
        Stop the watchdog and close the socket.
        """
        self.stopWatchdog()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
