# -*- test-case-name: tests.integration.test_tap_commands -*-
"""
The C{socketproxyd} command: a drop-in for C{systemd-socket-proxyd} in an
C{ExecStart=} line, running the same service as the twistd plugin.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import cast

from twisted.logger import globalLogBeginner

from socketproxyd.logs import textObserver
from socketproxyd.reactors import ProxyReactor
from socketproxyd.tap import Options, makeService


def main(argv: Sequence[str] | None = None) -> None:
    """
    Parse the command line, serve until stopped, exit 0; exit 1 with one
    line on stderr when the proxy cannot start.
    """
    config = Options()
    config.parseOptions(list(sys.argv[1:] if argv is None else argv))
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [textObserver(sys.stderr)], discardBuffer=True, redirectStandardIO=False
    )
    service = makeService(config, cast(ProxyReactor, reactor))
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    sys.exit(0)
