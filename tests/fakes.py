"""
Test doubles shared by the unit tests.
"""

from __future__ import annotations

from twisted.internet.task import Clock


class FakeFDReactor(Clock):
    """
    A clock that also records which readers and writers are registered, for
    code that puts its own descriptors in the reactor; the tests make the
    reactor's calls by hand.
    """

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[object] = set()
        self.writers: set[object] = set()

    def addReader(self, reader: object) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: object) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: object) -> None:
        self.writers.discard(writer)


class FakeTracker:
    """
    A connection tracker with room for every session, which records the
    ones that closed.
    """

    def __init__(self) -> None:
        self.closes: list[object] = []

    def room(self) -> int:
        return 10

    def opened(self, session: object) -> None:
        pass

    def closed(self, session: object) -> None:
        self.closes.append(session)
