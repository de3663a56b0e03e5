"""
Tests for L{socketproxyd.logs}.
"""

import io
import os

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.logs import isJournal, journalForTwist, levelFromEnvironment, textObserver


class TextObserverTests(SynchronousTestCase):
    def emit(self, journal: bool, **event: object) -> str:
        stream = io.StringIO()
        textObserver(stream, journal=journal)(
            {"log_level": LogLevel.info, "log_format": "", **event}
        )
        return stream.getvalue()

    def test_plain(self) -> None:
        self.assertEqual(self.emit(False, log_format="hello {x}", x=1), "hello 1\n")

    def test_journalPriorities(self) -> None:
        self.assertEqual(self.emit(True, log_format="w", log_level=LogLevel.warn), "<4>w\n")
        self.assertEqual(self.emit(True, log_format="d", log_level=LogLevel.debug), "<7>d\n")
        self.assertEqual(self.emit(True, log_format="e", log_level=LogLevel.error), "<3>e\n")

    def test_failureOnOneLine(self) -> None:
        """
        A logged failure shows its type and message, never a traceback.
        """
        try:
            raise ValueError("bad thing")
        except ValueError:
            failure = Failure()
        text = self.emit(False, log_format="while stopping", log_failure=failure)
        self.assertEqual(text, "while stopping: ValueError: bad thing\n")


class EnvironmentTests(SynchronousTestCase):
    def test_systemdLogLevel(self) -> None:
        self.assertEqual(levelFromEnvironment({"SYSTEMD_LOG_LEVEL": "debug"}), "debug")
        self.assertEqual(levelFromEnvironment({"SYSTEMD_LOG_LEVEL": "4"}), "warning")
        self.assertEqual(levelFromEnvironment({"SYSTEMD_LOG_LEVEL": "err"}), "error")
        self.assertIsNone(levelFromEnvironment({}))

    def test_isJournal(self) -> None:
        """
        Only a stream whose device and inode match JOURNAL_STREAM is the journal.
        """
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        with os.fdopen(writeEnd, "w") as stream:
            status = os.fstat(writeEnd)
            self.assertTrue(
                isJournal(stream, {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
            )
            self.assertFalse(isJournal(stream, {"JOURNAL_STREAM": "1:2"}))
            self.assertFalse(isJournal(stream, {}))


class _TwistOptions(dict):
    """
    What L{journalForTwist} reads of twist's options: its log file, the
    observer factory its runner will call, and the chosen sub-command.
    """

    subCommand = "socketproxy"


class JournalForTwistTests(SynchronousTestCase):
    """
    Under twist, a log file that is the journal gets the proxy's journal
    lines instead of twist's JSON, unless C{--log-format} was given.
    """

    def setUp(self) -> None:
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.stream = os.fdopen(writeEnd, "w")
        self.addCleanup(self.stream.close)
        status = os.fstat(writeEnd)
        self.environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        self.default = object()

    def runner(self) -> _TwistOptions:
        """
        twist's options as its runner would read them, the log file being
        the journal.
        """
        return _TwistOptions(logFile=self.stream, fileLogObserverFactory=self.default)

    def test_journal(self) -> None:
        runner = self.runner()
        argv = ["twist", "socketproxy", "--log-format=x", "1:2"]
        self.assertTrue(journalForTwist(runner, argv, self.environ))
        self.assertIs(runner["fileLogObserverFactory"], textObserver)

    def test_explicitFormatKept(self) -> None:
        for option in (["--log-format=json"], ["--log-format", "text"], ["--log-fo=json"]):
            runner = self.runner()
            argv = ["twist", *option, "socketproxy", "1:2"]
            self.assertFalse(journalForTwist(runner, argv, self.environ))
            self.assertIs(runner["fileLogObserverFactory"], self.default)

    def test_notJournal(self) -> None:
        runner = self.runner()
        self.assertFalse(journalForTwist(runner, ["twist", "socketproxy", "1:2"], {}))
        self.assertIs(runner["fileLogObserverFactory"], self.default)

    def test_notTwist(self) -> None:
        """
        twistd's options (no observer factory) and our own command's (no
        parent) are left alone.
        """
        self.assertFalse(journalForTwist(None, ["socketproxyd", "1:2"], self.environ))
        runner = _TwistOptions(logFile=self.stream)
        self.assertFalse(journalForTwist(runner, ["twistd", "socketproxy"], self.environ))
        self.assertNotIn("fileLogObserverFactory", runner)
