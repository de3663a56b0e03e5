"""
Unit tests for L{socketproxyd.config.routes}: each listener's connections go to
the target its name routes them to, and every way that cannot be done is one
line and exit status 1 (routing end to end, through the real command, is
L{tests.integration.test_routing}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.config.routes import RouteError, Routes
from socketproxyd.config.target import parseTarget

WEB, DB, DEFAULT = (parseTarget(t) for t in ("/run/web.sock", "127.0.0.1:5432", "127.0.0.1:80"))


class RoutesTests(SynchronousTestCase):
    """
    L{Routes} picks a listener's target by its name.
    """

    def test_targetFor(self) -> None:
        routes = Routes(DEFAULT, {"web": WEB})
        self.assertIs(routes.targetFor("web", "fd 3"), WEB)
        self.assertIs(routes.targetFor("other", "fd 4"), DEFAULT)
        self.assertIs(routes.targetFor(None, "--listen=tcp:1"), DEFAULT)

    def test_noTarget(self) -> None:
        routes = Routes(None, {"web": WEB})
        with self.assertRaises(RouteError) as caught:
            routes.targetFor("db", "fd 4 (db, IPv4)")
        self.assertEqual(
            str(caught.exception),
            "fd 4 (db, IPv4) has no target: give TARGET, or --target=db=TARGET",
        )

    def test_unused(self) -> None:
        routes = Routes(None, {"web": WEB, "api": DB})
        routes.checkUsed({"web", "api", None})
        with self.assertRaises(RouteError) as caught:
            routes.checkUsed({"web", "db"})
        self.assertEqual(
            str(caught.exception),
            "--target=api=...: no listener is named 'api' (listener names: db, web)",
        )

    def test_unusedWithoutNames(self) -> None:
        """
        With no socket, or none named, the message says how to name one.
        """
        routes = Routes(None, {"web": WEB})
        for names, passed in [
            (set(), "no socket was passed"),
            ({None}, "no listener has a name"),
        ]:
            with self.assertRaises(RouteError) as caught:
                routes.checkUsed(names)
            self.assertEqual(
                str(caught.exception),
                f"--target=web=...: no listener is named 'web' ({passed}): pass one named web "
                "(FileDescriptorName=web in its .socket unit) or give --listen=web=ENDPOINT",
            )
