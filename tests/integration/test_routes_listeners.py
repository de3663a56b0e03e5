"""
L{socketproxyd.service.listeners.ListenerService} opening real inherited
listening sockets (bound on the loopback interface) on the factory of each
one's route, and the STATUS it reports (the configuration itself is unit-tested
in L{tests.unit.test_routes}; routing end to end in
L{tests.integration.test_routing}).
"""

from __future__ import annotations

import io
import os
import socket
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.routes import Routes
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.service.listeners import ListenerService
from socketproxyd.service.proxy import ProxyService
from socketproxyd.service.status import StatusService
from socketproxyd.systemd.activation import InheritedSocket

WEB, DB, DEFAULT = (parseTarget(t) for t in ("/run/web.sock", "127.0.0.1:5432", "127.0.0.1:80"))


class RecordingNotifier:
    """
    Stands in for L{socketproxyd.systemd.notify.Notifier}: records STATUS.
    """

    address = "/run/notify"

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def ready(self, status: str) -> None:
        self.statuses.append(status)

    def status(self, status: str) -> None:
        self.statuses.append(status)

    def startWatchdog(self) -> None:
        pass


class ListenerRoutingTests(SynchronousTestCase):
    """
    L{ListenerService} opens each listener on the factory of its route.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)

    def inherited(self, *names: str) -> list[InheritedSocket]:
        """
        Real listening sockets passed in under C{names}.
        """
        found = []
        for name in names:
            sock = socket.socket()
            self.addCleanup(sock.close)
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            fd = sock.detach()
            self.addCleanup(self.closeUnadopted, fd)
            found.append(InheritedSocket(fd, socket.AF_INET, name))
        return found

    def closeUnadopted(self, fd: int) -> None:
        """
        Close an inherited fd the service did not adopt (adopting closes it).
        """
        if fd not in [adopted[0] for adopted in self.reactor.adoptedPorts]:
            os.close(fd)

    def listeners(
        self, routes: Routes, inherited: list[InheritedSocket] = (), listen: tuple[str, ...] = ()
    ) -> ListenerService:
        self.proxy = ProxyService(
            self.reactor, routes, ProxySettings(), findInherited=lambda: inherited, listen=listen
        )
        service = self.proxy.listeners
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def failsToStart(self, routes: Routes, *args: object, **kwargs: object) -> str:
        with self.assertRaises(SystemExit) as caught:
            self.listeners(routes, *args, **kwargs)
        self.assertEqual(caught.exception.code, 1)
        message = self.stderr.getvalue()
        self.assertEqual(message.count("\n"), 1, message)
        return message

    def test_byName(self) -> None:
        """
        Inherited sockets and C{--listen} endpoints each get their route's
        factory; sockets of the same name share one; unnamed listeners and
        those no C{--target} names go to TARGET.
        """
        service = self.listeners(
            Routes(DEFAULT, {"web": WEB, "db": DB}),
            self.inherited("web", "db", "web", "other"),
            ("db=tcp:5432", "tcp:8080:interface=127.0.0.1"),
        )
        factories = [factory for _, _, factory in self.reactor.adoptedPorts]
        factories += [server[1] for server in self.reactor.tcpServers]
        self.assertEqual(
            [(f.route, f.target) for f in factories],
            [
                ("web", WEB),
                ("db", DB),
                ("web", WEB),
                ("other", DEFAULT),
                ("db", DB),
                (None, DEFAULT),
            ],
        )
        self.assertEqual([f.routePrefix for f in factories[:2]], ["web: ", "db: "])
        self.assertIs(factories[0], factories[2])
        self.assertIs(factories[1], factories[4])
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertEqual(len(service.listening.ports), 6)

    def test_unnamedSocketsHaveNoRoute(self) -> None:
        """
        Sockets passed without LISTEN_FDNAMES are C{unknown}: no name in
        their log lines.
        """
        self.listeners(Routes(DEFAULT), self.inherited("unknown"))
        [(_, _, factory)] = self.reactor.adoptedPorts
        self.assertIsNone(factory.route)
        self.assertEqual(factory.routePrefix, "")

    def test_listenerWithoutTarget(self) -> None:
        message = self.failsToStart(Routes(None, {"web": WEB}), self.inherited("web", "db"))
        self.assertIn("has no target: give TARGET, or --target=db=TARGET", message)
        self.assertIn("fd ", message)
        self.stderr.truncate(0)
        self.stderr.seek(0)
        message = self.failsToStart(Routes(None, {"web": WEB}), listen=("tcp:0",))
        self.assertEqual(
            message,
            "socketproxyd: --listen=tcp:0 has no target: give TARGET, or name it "
            "(NAME=ENDPOINT) and give --target=NAME=TARGET\n",
        )

    def test_targetWithoutListener(self) -> None:
        message = self.failsToStart(
            Routes(DEFAULT, {"api": WEB}), self.inherited("web"), ("db=tcp:0",)
        )
        self.assertEqual(
            message,
            "socketproxyd: --target=api=...: no listener is named 'api' "
            "(listener names: db, web)\n",
        )

    def test_badListenName(self) -> None:
        message = self.failsToStart(Routes(DEFAULT), listen=("=tcp:0",))
        self.assertIn("not a listener name", message)

    def test_statusPerRoute(self) -> None:
        """
        STATUS gives the total and the count per name.
        """
        service = self.listeners(
            Routes(DEFAULT, {"web": WEB}), self.inherited("web"), ("db=tcp:0",)
        )
        notifier = RecordingNotifier()
        proxy = self.proxy
        status = StatusService(self.reactor, notifier, proxy.ledger, proxy.limit, service.listening)
        status.startService()
        self.assertEqual(notifier.statuses, [])
        self.reactor.run()
        self.assertEqual(notifier.statuses, ["0 connections open (at most 256): db 0, web 0"])

    def test_statusWithoutNames(self) -> None:
        """
        Listeners that have no names (systemd's C{unknown}, an unnamed
        C{--listen}) or only one give the total alone.
        """
        for routes, inherited, listen in [
            (Routes(DEFAULT), "unknown", ("tcp:0",)),
            (Routes(DEFAULT, {"web": WEB}), "web", ("tcp:0",)),
        ]:
            service = self.listeners(routes, self.inherited(inherited), listen)
            notifier = RecordingNotifier()
            proxy = self.proxy
            status = StatusService(
                self.reactor, notifier, proxy.ledger, proxy.limit, service.listening
            )
            self.assertEqual(status.status(), "0 connections open (at most 256)", inherited)
