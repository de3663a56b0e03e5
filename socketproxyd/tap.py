# -*- test-case-name: tests.unit.test_tap_options -*-
"""
The command line (L{Options}) and L{makeService}, shared by the
C{socketproxyd} command and the twistd/twist C{socketproxy} plugin.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Callable
from typing import IO, cast

import twisted
from twisted.python import usage

from socketproxyd import __version__
from socketproxyd.config.optiontext import BY_NAME as TEXTS
from socketproxyd.config.optiontext import helpText, plain
from socketproxyd.config.routes import RouteError, Routes, parseNamedTarget, splitListen
from socketproxyd.config.settings import ProxySettings, parsePipeSize
from socketproxyd.config.target import Target, parseTarget
from socketproxyd.config.timespan import parseTimespan
from socketproxyd.logs import (
    LEVELS,
    journalForTwist,
    levelFromEnvironment,
    setLevel,
    useJournalIfThere,
)
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.proxy import ProxyService
from socketproxyd.stream.splice.pipes import available as spliceAvailable
from socketproxyd.systemd.activation import InheritedSocket, inheritedSockets
from socketproxyd.systemd.notify import Notifier
from socketproxyd.transparent import mayBindTransparent

PROGRAM = "socketproxyd"
_DECIMAL = re.compile(r"\s*[0-9]+\s*")
_SPANS = ("exit-idle-time", "connect-timeout", "connect-retry", "idle-timeout", "drain-timeout")


def _connectionsMax(text: str) -> int:
    if not _DECIMAL.fullmatch(text) or int(text) < 1:
        raise ValueError(f"--connections-max={text!r}: give a whole decimal number of 1 or more")
    return int(text)


def _span(option: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return parseTimespan(text)
        except ValueError as e:
            raise ValueError(
                f"--{option}={text!r}: {e}; give a systemd time span "
                f"such as 90, 500ms, 5min 30s or infinity"
            ) from None

    return parse


def _choice(option: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"--{option}={text!r}: give one of {', '.join(choices)}")
        return text

    return parse


def _doc(option: str) -> str:
    """
    An option's summary as Twisted's own help shows it.
    """
    return plain(TEXTS[option].summary)


class Options(usage.Options):
    """
    The options and TARGET of systemd-socket-proxyd, plus the ones an
    operator of a production proxy needs.

    A usage error prints one line on stderr and exits 1 under every runner
    (twistd itself would print the whole help and exit 0).
    """

    synopsis = "[OPTIONS] [TARGET]"
    longdesc = (
        "Accept clients on the listening sockets passed in by socket activation "
        "(and on --listen endpoints) and forward each to TARGET: HOST:PORT, "
        "[IPv6]:PORT (port 80 when none is given), /path/to/unix.socket or "
        "@abstract. --target=NAME=TARGET "
        "sends the clients of the listeners named NAME (FileDescriptorName=, "
        "--listen=NAME=ENDPOINT) elsewhere; TARGET serves all others."
    )
    optFlags = [["keepalive", None, _doc("keepalive")]]
    optParameters = [
        ["connections-max", "c", 256, _doc("connections-max"), _connectionsMax],
        ["exit-idle-time", None, "infinity", _doc("exit-idle-time"),
         _span("exit-idle-time")],
        ["connect-timeout", None, "30s", _doc("connect-timeout"),
         _span("connect-timeout")],
        ["connect-retry", None, "0", _doc("connect-retry"), _span("connect-retry")],
        ["idle-timeout", None, "infinity", _doc("idle-timeout"),
         _span("idle-timeout")],
        ["drain-timeout", None, "0", _doc("drain-timeout"), _span("drain-timeout")],
        ["proxy-protocol", None, None, _doc("proxy-protocol"),
         _choice("proxy-protocol", ("v1", "v2"))],
        ["data-path", None, "auto", _doc("data-path"),
         _choice("data-path", ("auto", "splice", "transport"))],
        ["pipe-size", None, "256K", _doc("pipe-size"), parsePipeSize],
        ["log-level", None, None, _doc("log-level"), _choice("log-level", tuple(LEVELS))],
        ["metrics", None, None, _doc("metrics")],
        ["transparent", None, None, _doc("transparent"), _choice("transparent", ("on", "try"))],
    ]  # fmt: skip

    stderr: IO[str] = sys.stderr

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["targets"] = {}
        self["accept-proxy-protocol"] = set()

    def opt_accept_proxy_protocol(self, name: str) -> None:
        """
        Clients send a PROXY header first: on every listener, or with =NAME on those named NAME.
        """
        self["accept-proxy-protocol"].add(name)

    def opt_listen(self, description: str) -> None:
        """
        Also listen on [NAME=]ENDPOINT (tcp:8080, web=unix:/run/a.sock, udp:53); repeatable.
        """
        try:
            splitListen(description)
        except RouteError as e:
            raise usage.UsageError(str(e)) from None
        self["listen"].append(description)

    def opt_target(self, route: str) -> None:
        """
        NAME=TARGET: clients of the listeners named NAME go to TARGET; repeatable.
        """
        try:
            name, target = parseNamedTarget(route)
        except RouteError as e:
            raise usage.UsageError(str(e)) from None
        if name in self["targets"]:
            raise usage.UsageError(f"--target={route}: {name!r} has a target already")
        self["targets"][name] = target

    opt_h = usage.Options.opt_help

    def getUsage(self, width: int | None = None) -> str:
        """
        The option list, laid out by Twisted's C{docMakeChunks} from the
        declared options, with a placeholder after each C{=} saying what
        the option takes (C{--connections-max=N}) and each default kept on
        one line. As Twisted's own, it is as wide as C{$COLUMNS} says (80
        unless set).
        """
        if not width:
            columns = os.environ.get("COLUMNS", "")
            width = int(columns) if columns.isdigit() and int(columns) > 0 else 80
        shortOf = {long: short for short, long in self.synonyms.items() if len(short) == 1}
        entries = []
        for declared in self.longOpt:
            name = declared.removesuffix("=")
            text = TEXTS.get(name)
            doc = helpText(text) if text is not None else self.docs[name].strip()
            if text is not None and text.placeholder is not None:
                declared = f"{name}={text.placeholder}"
            doc = doc.replace("[default: ", "[default:\xa0")
            entries.append({"long": declared, "short": shortOf.get(name), "doc": doc})
        options = "".join(usage.docMakeChunks(entries, width)).replace("\xa0", " ")
        longdesc = "\n".join(textwrap.wrap(self.longdesc, width))
        return f"Options:\n{options}\n{longdesc}\n"

    def getSynopsis(self) -> str:
        """
        The usage line, with the program's name (or twistd's and the
        plugin's) before the options.
        """
        if self.parent is not None:
            return f"{self.parent.getSynopsis()} socketproxy {self.synopsis}"
        return f"Usage: {PROGRAM} {self.synopsis}"

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"{PROGRAM} {__version__} (Twisted {twisted.__version__})")
        sys.exit(0)

    def parseArgs(self, *targets: str) -> None:
        if len(targets) > 1:
            raise usage.UsageError(
                f"one TARGET expected, got {len(targets)}: {' '.join(targets)}; "
                "route named sockets to others with --target=NAME=TARGET"
            )
        self["target-text"] = targets[0] if targets else None

    def postOptions(self) -> None:
        for option in _SPANS:
            if isinstance(self[option], str):
                self[option] = parseTimespan(self[option])
        if isinstance(self["pipe-size"], str):
            self["pipe-size"] = parsePipeSize(self["pipe-size"])
        if self["target-text"] is None and not self["targets"]:
            raise usage.UsageError(
                "TARGET is missing: give HOST:PORT, [IPv6]:PORT, /path/to/socket or "
                "@abstract, or --target=NAME=TARGET"
            )
        default = None
        if self["target-text"] is not None:
            try:
                default = parseTarget(self["target-text"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        self["routes"] = Routes(default, self["targets"])
        if self["transparent"]:
            self._checkTransparent(default)
        if self["data-path"] == "splice" and not spliceAvailable():
            raise usage.UsageError("--data-path=splice needs Linux splice(2)")
        if self["accept-proxy-protocol"]:
            self._needsSplice("--accept-proxy-protocol")
        if self["log-level"] is None:
            self["log-level"] = levelFromEnvironment() or "info"

    def _checkTransparent(self, default: Target | None) -> None:
        """
        C{--transparent} works only on the splice path, to IP address
        targets, with CAP_NET_ADMIN: said before anything opens.
        """
        self._needsSplice("--transparent")
        for target in [default, *self["targets"].values()]:
            if target is not None and target.kind not in ("ipv4", "ipv6"):
                raise usage.UsageError(
                    f"--transparent needs TARGET to be an IP address, not {target}: the "
                    "client's address is used to connect to it"
                )
        if not mayBindTransparent():
            raise usage.UsageError(
                "--transparent needs CAP_NET_ADMIN or CAP_NET_RAW (under systemd: "
                "AmbientCapabilities=CAP_NET_ADMIN and CapabilityBoundingSet=CAP_NET_ADMIN)"
            )

    def _needsSplice(self, option: str) -> None:
        """
        C{option} works only on the splice data path: said if it is not
        the one.
        """
        if self["data-path"] == "transport" or not spliceAvailable():
            raise usage.UsageError(
                f"{option} needs the splice data path (not --data-path=transport)"
            )

    def parseOptions(self, options: list[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        # getopt has no optional values: each bare option gets its default one.
        bare = {"--accept-proxy-protocol": "", "--transparent": "on"}
        options = [f"{o}={bare[o]}" if o in bare else o for o in options]
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            message = str(e).removeprefix("Parameter type enforcement failed: ")
            self.stderr.write(f"{PROGRAM}: {message} (see --help)\n")
            raise SystemExit(1) from None

    def settings(self) -> ProxySettings:
        """
        The per-connection settings these options choose.
        """
        return ProxySettings(
            connectTimeout=self["connect-timeout"],
            idleTimeout=self["idle-timeout"],
            keepalive=bool(self["keepalive"]),
            proxyProtocol=self["proxy-protocol"],
            dataPath=self["data-path"],
            connectRetry=self["connect-retry"],
            pipeSize=self["pipe-size"],
            logsCloses=self["log-level"] == "debug",
            timesConnections=self["metrics"] is not None,
            acceptProxyProtocol=frozenset(self["accept-proxy-protocol"]),
            transparent=self["transparent"] or "",
        )


def makeService(
    config: Options,
    reactor: ProxyReactor | None = None,
    findInherited: Callable[[], list[InheritedSocket]] = inheritedSockets,
) -> ProxyService:
    """
    Build the proxy from the command line. Nothing is opened here: the
    listeners open when the service starts (Twisted's
    C{privilegedStartService}, or C{startService} under runners without
    it), and a start-up failure there exits 1 with one line on stderr
    rather than a traceback, under every runner.
    """
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = cast(ProxyReactor, installed)
    setLevel(config["log-level"])
    useJournalIfThere()
    journalForTwist(config.parent)
    return ProxyService(
        reactor,
        config["routes"],
        config.settings(),
        connectionsMax=config["connections-max"],
        exitIdleTime=config["exit-idle-time"],
        drainTimeout=config["drain-timeout"],
        notifier=Notifier(reactor),
        findInherited=findInherited,
        listen=config["listen"],
        limitsDescriptors=True,
        metrics=config["metrics"],
    )
