# -*- test-case-name: tests.unit.test_optiontext -*-
"""
Every option's text, in one place: C{--help} shows each option's summary
and default, and the README's option list and the manual page's OPTIONS
are rendered from the same texts (the summary, then the details), so the
three cannot say different things. C{tests.support.docs} writes the
rendered texts into README.rst and man/socketproxyd.8, and a test keeps
them equal.

In the texts, C{`literal`} marks what is typed as it stands (a command,
a value, a file): plain in C{--help}, a literal in reStructuredText, bold
in the manual page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class OptionText:
    """
    What one option is called, takes and means.

    @ivar long: the long name, without C{--}.
    @ivar short: the one-letter name, if any.
    @ivar placeholder: what follows C{=} (C{None} for a flag).
    @ivar default: the default as the texts show it (C{None}: none shown).
    @ivar summary: what the option does, for C{--help} and the README.
    @ivar details: more, for the README and the manual page (not for
        C{--help}).
    """

    long: str
    short: str | None
    placeholder: str | None
    default: str | None
    summary: str
    details: str = ""

    def whole(self) -> str:
        """
        The summary and the details, as the README and the manual give them.
        """
        return " ".join(filter(None, [self.summary, self.details]))

    def spelling(self) -> str:
        """
        The option as typed, with its placeholder: C{--connections-max=N}.
        """
        if self.placeholder is None:
            return f"--{self.long}"
        return f"--{self.long}={self.placeholder}"


OPTIONS = (
    OptionText(
        "connections-max", "c", "N", "256",
        "Proxy at most N connections and datagram sessions at once (decimal, N >= 1); more "
        "clients wait in the listening socket's backlog.",
        "A client is served as soon as one of the N closes. The limit is also kept below "
        "what the process's descriptors allow.",
    ),
    OptionText(
        "exit-idle-time", None, "SPAN", "infinity",
        "Exit with status 0 once no connection has been open for SPAN, counted from "
        "start-up too.",
        "Under systemd the socket unit keeps the listening sockets, and the next client "
        "starts the proxy again.",
    ),
    OptionText(
        "connect-timeout", None, "SPAN", "30s",
        "Give up connecting to TARGET after SPAN (each attempt, with `--connect-retry`); the "
        "client is closed.",
    ),
    OptionText(
        "connect-retry", None, "SPAN", "0, off",
        "Try again a TARGET that refuses, whose UNIX socket does not exist yet or whose "
        "backlog is full, until SPAN after the first failed attempt; the client waits and "
        "its first bytes are kept.",
        "Attempts follow after 10 ms, 20 ms, ... at most 1 s apart.",
    ),
    OptionText(
        "idle-timeout", None, "SPAN", "infinity",
        "Close a connection that moved no byte either way for SPAN; end a datagram session "
        "without a datagram either way for SPAN (60s for sessions when not given).",
    ),
    OptionText(
        "drain-timeout", None, "SPAN", "0",
        "On SIGTERM or SIGINT, let open connections finish for SPAN, then close the rest "
        "(datagram sessions end at once); a second SIGTERM or SIGINT closes them at once.",
    ),
    OptionText(
        "keepalive", None, None, None,
        "Enable TCP keepalive on both sockets of every connection.",
    ),
    OptionText(
        "proxy-protocol", None, "v1|v2", "off",
        "Send a PROXY protocol header with the client's address to TARGET first (v2 before "
        "every datagram of a datagram listener; v1 has no datagram form and is refused "
        "there).",
    ),
    OptionText(
        "accept-proxy-protocol", None, "[NAME]", "off",
        "Take each client's address from the PROXY header (haproxy's, v1 or v2) it must "
        "send first, within the connect timeout (where that is infinite, the idle timeout, "
        "or 30s): "
        "alone, on every listener; with `=NAME`, "
        "on the listeners named NAME; repeatable.",
        "The header's addresses replace the socket's in the log and close lines and in the "
        "header `--proxy-protocol` sends. A v2 `LOCAL` header (a health check) or a v1 "
        "`UNKNOWN` one is served with the socket's own addresses. A missing, malformed, "
        "truncated, oversized or late header closes the connection, with one warning until "
        "a client sends a good one, and nothing of it or after it reaches TARGET. Only the "
        "header's own bytes are read before TARGET is connected. Needs the splice data path.",
    ),
    OptionText(
        "transparent", None, "[try]", "off",
        "Connect to TARGET (and send each datagram session's datagrams) from each client's "
        "own address and port, so the backend sees "
        "the client as if it had connected directly (IP_TRANSPARENT); with `=try`, a client "
        "whose address cannot be used is served from the proxy's.",
        "Needs CAP_NET_ADMIN (or CAP_NET_RAW), a TARGET that is an IP address, the splice "
        "data path, and "
        "routing that brings the backend's replies to the proxy (see the README). A client "
        "on a UNIX socket, or of another address family than TARGET, is closed, with one "
        "warning until one can be served (a datagram from it is dropped), and so is one on "
        "loopback when TARGET is not. A client whose address and port are taken on this "
        "host (a client on it, whose socket holds them) is connected from its address with "
        "another port. Datagram sessions are bound to their client's address likewise.",
    ),
    OptionText(
        "listen", None, "[NAME=]ENDPOINT", None,
        "Also listen on a Twisted server endpoint (`tcp:8080`, `web=unix:/run/app.sock`) or "
        "on `udp:PORT[:interface=ADDRESS]`, named NAME when given; repeatable.",
    ),
    OptionText(
        "target", None, "NAME=TARGET", None,
        "Forward the clients of the listeners named NAME (`FileDescriptorName=` of their "
        "socket unit, or `--listen=NAME=...`) to TARGET; repeatable. The positional TARGET "
        "serves every other listener.",
    ),
    OptionText(
        "data-path", None, "auto|splice|transport", "auto",
        "How bytes move: `splice` (splice(2) through a pipe pair, Linux), `transport` "
        "(Twisted transports), or `auto`: splice where both sockets allow it.",
    ),
    OptionText(
        "pipe-size", None, "BYTES", "256K",
        "Pipe size of the splice data path, in bytes or with a K or M suffix, from 4K to "
        "`fs.pipe-max-size`.",
    ),
    OptionText(
        "log-level", None, "LEVEL", "SYSTEMD_LOG_LEVEL, else info",
        "Log at `debug`, `info`, `warning` or `error`; when not given, at the level "
        "`SYSTEMD_LOG_LEVEL` names, else at info.",
        "At debug level every connection ends with one line: listener, client, target, "
        "bytes each way, duration and how it ended.",
    ),
    OptionText(
        "metrics", None, "ENDPOINT|NAME", "off",
        "Serve Prometheus metrics at `/metrics` on this Twisted server endpoint "
        "(`tcp:9105:interface=127.0.0.1`, `unix:/run/socketproxyd/metrics.sock`), or on "
        "the inherited sockets named NAME, which are then not proxied.",
        "Connections and datagram sessions per route (the listener's name), bytes each "
        "way, how connections ended and how long connecting and serving took, connect "
        "retries, the limit, and the process's CPU, memory and descriptors. A scrape is "
        "not a connection: `-c`, `--exit-idle-time` and STATUS do not count it, and it is "
        "answered at the limit and when the connections hold every descriptor they may. "
        "A scraper is disconnected when a request it has begun is not whole 10 s later, "
        "or after 60 s without a byte. Other paths answer 404, other methods 405.",
    ),
)  # fmt: skip
"""
Every option but C{--help} and C{--version}, in the order the texts list
them.
"""

BY_NAME = {option.long: option for option in OPTIONS}

LITERAL = re.compile(r"`([^`]+)`")
"""
A literal in the texts: C{`text`}.
"""


def plain(text: str) -> str:
    """
    C{text} for C{--help}: the literals as they stand.
    """
    return LITERAL.sub(r"\1", text)


def helpText(option: OptionText) -> str:
    """
    An option's line in C{--help}: its summary and default.
    """
    default = f" [default: {option.default}]" if option.default is not None else ""
    return plain(option.summary) + default
