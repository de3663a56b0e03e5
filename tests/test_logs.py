"""
Tests for L{socketproxyd.logs}.
"""

import io
import os

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.logs import isJournal, levelFromEnvironment, textObserver


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
