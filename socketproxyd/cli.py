# -*- test-case-name: tests.integration.test_tap_commands -*-
"""
The C{socketproxyd} command: a drop-in for C{systemd-socket-proxyd} in an
C{ExecStart=} line, running the same service as the twistd plugin.

Nothing here imports Twisted before the early relay
(L{socketproxyd.stream.earlyrelay}) has looked for a client waiting at
activation: when one is, the relay serves it on a thread of its own while
Twisted loads, and the proxy takes the relay's connections over once it
is built.
"""

from __future__ import annotations

import sys

from socketproxyd.stream.earlyrelay import beginEarlyRelay

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """
    Parse the command line, serve until stopped, exit 0; exit 1 with one
    line on stderr when the proxy cannot start.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    handover = beginEarlyRelay(args)

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
        service.takeOver(handover.finish())
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    sys.exit(0)
