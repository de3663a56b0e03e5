# -*- test-case-name: tests.unit.test_logs -*-
"""
Logging: one threshold for the proxy's own events under every runner, and
lines that journald files at the right priority.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import IO

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer, provider

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}
_SYSTEMD_LEVELS = {
    "emerg": "error", "alert": "error", "crit": "error", "err": "error",
    "warning": "warning", "notice": "info", "info": "info", "debug": "debug",
    "0": "error", "1": "error", "2": "error", "3": "error",
    "4": "warning", "5": "info", "6": "info", "7": "debug",
}  # fmt: skip
_PRIORITIES = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


@implementer(ILogObserver)
class _Destination:
    """
    Where the proxy's own events go after the level filter: the runner's
    observers, or straight to the journal when stderr is the journal, so
    that they carry their priority under twistd and twist as well.
    """

    def __init__(self) -> None:
        self.journal: ILogObserver | None = None

    def __call__(self, event: dict) -> None:
        (self.journal or globalLogPublisher)(event)


destination = _Destination()
levelPredicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer: ILogObserver = FilteringLogObserver(destination, [levelPredicate])
"""
The observer every logger of this package emits to: the chosen threshold,
then whatever the runner (twistd, twist or our command) observes, or the
journal directly.
"""


def setLevel(name: str) -> None:
    """
    Show the proxy's events at C{name} (a key of L{LEVELS}) and above.
    """
    levelPredicate.setLogLevelForNamespace("", LEVELS[name])


def levelFromEnvironment(environ: Mapping[str, str] | None = None) -> str | None:
    """
    The level C{SYSTEMD_LOG_LEVEL} asks for, as the original honours it, or
    L{None} when it is unset or unknown.
    """
    environ = os.environ if environ is None else environ
    return _SYSTEMD_LEVELS.get(environ.get("SYSTEMD_LOG_LEVEL", "").strip().lower())


def _formatLine(event: dict, journal: bool) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        reason = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        text = f"{text}: {reason}" if event.get("log_format") else reason
    lines = text.splitlines() or [""]
    if not journal:
        return "".join(line + "\n" for line in lines)
    priority = _PRIORITIES.get(event.get("log_level", LogLevel.info), 6)
    return "".join(f"<{priority}>{line}\n" for line in lines)


def isJournal(stream: IO[str] | None, environ: Mapping[str, str] | None = None) -> bool:
    """
    Whether C{stream} is connected to the journal: systemd sets
    C{JOURNAL_STREAM} to the device and inode of that connection.
    """
    if stream is None:
        return False
    environ = os.environ if environ is None else environ
    expected = environ.get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


_CHATTER = re.compile(r"\w+ starting on .+|\(\w+ Port .+ Closed\)")


@provider(ILogFilterPredicate)
def _quiet(event: dict) -> PredicateResult:
    """
    Leave out the line Twisted's ports write as they open and close
    (C{ProxyFactory starting on 8080}, C{(TCP Port 8080 Closed)}): the
    proxy says which listeners it serves itself.
    """
    if event.get("log_namespace") == "log_legacy" and _CHATTER.fullmatch(formatEvent(event)):
        return PredicateResult.no
    return PredicateResult.maybe


def textObserver(stream: IO[str], journal: bool | None = None) -> ILogObserver:
    """
    Plain one-line-per-event text on C{stream}; with C{<N>} priority prefixes
    when C{stream} is the journal.
    """
    if journal is None:
        journal = isJournal(stream)
    lines = FileLogObserver(stream, lambda event: _formatLine(event, journal))
    return FilteringLogObserver(lines, [_quiet])


def runnerObserver() -> ILogObserver | None:
    """
    The observer twistd should use when the application does not name
    one: the proxy's own when stderr is the journal (priorities, and no
    timestamp of twistd's beside journald's), otherwise C{None} (twistd's
    own, to a log file or stdout as its options say).
    """
    return textObserver(sys.stderr, journal=True) if isJournal(sys.stderr) else None


def journalForTwist(
    runner: MutableMapping | None,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """
    Under C{twist}, whose runner takes no log observer from the
    application and writes JSON to any log file that is not a terminal:
    when that file is the journal and no C{--log-format} was given, choose
    the observer factory C{--log-format} would (C{runner} is twist's own
    options, our options' C{parent}), so that its lines read as the console
    script's do.  Returns whether it did.

    Whether C{--log-format} was given is read from C{argv} (C{sys.argv},
    which C{twist} parses; getopt takes C{--log-fo} and longer prefixes).
    """
    if runner is None or "fileLogObserverFactory" not in runner:
        return False
    argv = sys.argv if argv is None else argv
    command = getattr(runner, "subCommand", None)
    before = argv[1 : argv.index(command)] if command in argv else argv[1:]
    if any(arg.startswith("--log-fo") for arg in before):
        return False
    if not isJournal(runner.get("logFile"), environ):
        return False
    runner["fileLogObserverFactory"] = textObserver
    return True


def useJournalIfThere(stream: IO[str] | None = None) -> bool:
    """
    When C{stream} (stderr by default) is the journal, write the proxy's own
    events there with priority prefixes, whatever the runner does with the
    rest; returns whether it is.
    """
    stream = sys.stderr if stream is None else stream
    if not isJournal(stream):
        return False
    destination.journal = textObserver(stream, journal=True)
    return True


def journalObserver() -> ILogObserver:
    """
    For C{twistd --logger=socketproxyd.logs.journalObserver}: lines on
    stderr, with priority prefixes under systemd.
    """
    return textObserver(sys.stderr)
