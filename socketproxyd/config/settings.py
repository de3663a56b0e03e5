"""
The settings chosen on the command line that every connection and session
follows, and the parsing of the one setting that is not a time span or a
choice (C{--pipe-size}).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

PIPE_SIZE = 256 * 1024
MIN_PIPE_SIZE = 4096
_SIZE = re.compile(r"([0-9]+)([KMG]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def pipeMaxSize() -> int:
    """
    The largest pipe an unprivileged process may ask for
    (C{fs.pipe-max-size}); 1 MiB, the kernel's default, where unknown.
    """
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def parsePipeSize(text: str) -> int:
    """
    A C{--pipe-size}: bytes, or with a binary K, M or G suffix, from 4 KiB
    to L{pipeMaxSize}.

    @raise ValueError: saying what is accepted.
    """
    match = _SIZE.fullmatch(text.strip())
    limit = pipeMaxSize()
    size = int(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0
    if not MIN_PIPE_SIZE <= size <= limit:
        raise ValueError(
            f"--pipe-size={text!r}: give a size from 4K to {limit} bytes "
            f"(fs.pipe-max-size), e.g. 64K or 1M"
        )
    return size


@dataclass(frozen=True)
class ProxySettings:
    """
    The per-connection behaviour chosen on the command line.

    @ivar connectTimeout: seconds to reach the target, all addresses together.
    @ivar idleTimeout: seconds without a byte either way before closing;
        C{math.inf} for never.
    @ivar keepalive: whether to enable TCP keepalive on both sockets.
    @ivar proxyProtocol: C{None}, C{"v1"} or C{"v2"}.
    @ivar dataPath: C{"auto"} or C{"splice"} (the splice pump where the
        platform has splice(2)), or C{"transport"} (Twisted transports).
    @ivar connectRetry: seconds after a client arrives during which a
        target that refuses or does not exist yet is tried again; 0 for
        never.
    @ivar pipeSize: the pipe size the splice pump asks for.
    @ivar logsCloses: whether every close gets a line (the log level is
        C{debug}), which needs each connection's addresses and start time.
    @ivar timesConnections: whether each connection keeps when it started
        and when its target answered, for the metrics' histograms.
    @ivar acceptProxyProtocol: the names of the listeners whose clients
        send a PROXY header first (C{""}: every listener).
    @ivar transparent: C{""} (off), C{"on"} (connect to the target from
        each client's own address) or C{"try"} (the same, and a client
        whose address cannot be used is served from the proxy's).
    """

    connectTimeout: float = 30.0
    idleTimeout: float = math.inf
    keepalive: bool = False
    proxyProtocol: str | None = None
    dataPath: str = "auto"
    connectRetry: float = 0.0
    pipeSize: int = PIPE_SIZE
    logsCloses: bool = False
    timesConnections: bool = False
    acceptProxyProtocol: frozenset[str] = frozenset()
    transparent: str = ""

    def acceptsHeaderOn(self, route: str | None) -> bool:
        """
        Whether the clients of C{route} must send a PROXY header first
        (C{acceptProxyProtocol} holds the route names, C{""} for all).
        """
        names = self.acceptProxyProtocol
        return bool(names) and ("" in names or route in names)
