# -*- test-case-name: tests.integration.test_tap_commands -*-
"""
The C{socketproxyd} command: a drop-in for C{systemd-socket-proxyd} in an
C{ExecStart=} line, running the same service as the twistd plugin.

Nothing here imports Twisted before the early relay
(L{socketproxyd.stream.earlyrelay}) has looked for a client waiting at
activation: when one is, Twisted loads on a second thread while the relay
serves it, and the proxy takes the relay's connections over once it runs.
"""

from __future__ import annotations

import sys

from socketproxyd.stream.earlyrelay import serveWhileLoading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def load() -> None:
    """
    Import what the proxy runs on (Twisted's reactor module among it,
    without installing the reactor: the main thread does that).
    """
    import twisted.internet.epollreactor  # noqa: F401

    import socketproxyd.tap  # noqa: F401


def main(argv: Sequence[str] | None = None) -> None:
    """
    Parse the command line, serve until stopped, exit 0; exit 1 with one
    line on stderr when the proxy cannot start.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    handover = serveWhileLoading(args, load)

    from typing import cast

    from twisted.logger import globalLogBeginner

    from socketproxyd.logs import textObserver
    from socketproxyd.reactors import ProxyReactor
    from socketproxyd.tap import Options, makeService

    config = Options()
    config.parseOptions(args)
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [textObserver(sys.stderr)], discardBuffer=True, redirectStandardIO=False
    )
    proxyReactor = cast(ProxyReactor, reactor)
    if handover is None:
        service = makeService(config, proxyReactor)
    else:
        service = makeService(config, proxyReactor, findInherited=handover.findInherited)
    service.privilegedStartService()
    service.startService()
    if handover is not None:
        service.takeOver(handover)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    sys.exit(0)
