# -*- test-case-name: tests.unit.test_service -*-
"""
L{IdleExitService}: C{--exit-idle-time}, a consumer of the proxy's events.
"""

from __future__ import annotations

import math

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from socketproxyd.config.timespan import formatTimespan
from socketproxyd.events import Served, cancelled
from socketproxyd.logs import observer
from socketproxyd.reactors import ProxyReactor
from socketproxyd.service.ledger import Ledger


class IdleExitService(Service):
    """
    Stops the reactor once nothing has been served for C{exitIdleTime},
    counting from start-up too.
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: ProxyReactor, ledger: Ledger, exitIdleTime: float) -> None:
        self.reactor = reactor
        self.ledger = ledger
        self.exitIdleTime = exitIdleTime
        self._timer: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._arm()

    def opened(self, served: Served) -> None:
        self._cancel()

    def closed(self, served: Served) -> None:
        self._arm()

    def _arm(self) -> None:
        """
        Arm the timer when the last connection closed; disarm it otherwise.
        """
        self._cancel()
        if not self.ledger.open and self.running and not math.isinf(self.exitIdleTime):
            self._timer = self.reactor.callLater(self.exitIdleTime, self._exit)

    def _cancel(self) -> None:
        cancelled(self._timer)
        self._timer = None

    def _exit(self) -> None:
        self._timer = None
        self.log.info("No connection for {span}, exiting", span=formatTimespan(self.exitIdleTime))
        self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        self._cancel()
