# -*- test-case-name: tests.unit.test_service -*-
"""
L{CloseLog}: the debug line that closes every connection and datagram
session, a consumer of the proxy's events.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from socketproxyd.addresses import describeAddress
from socketproxyd.events import DOWNSTREAM, UPSTREAM, Served
from socketproxyd.logs import observer


class CloseLog:
    """
    Says, at debug level, how each connection or session went: listener,
    client, target, what moved each way, how long, how it ended.
    """

    log = Logger(observer=observer)

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def opened(self, served: Served) -> None:
        pass

    def closed(self, served: Served) -> None:
        addresses = served.addresses()
        if addresses is None:
            return
        listener, peer = addresses
        server, counts, datagrams = served.server, served.counts, served.datagrams
        if datagrams is None:
            moved = f"{counts[UPSTREAM]} bytes up, {counts[DOWNSTREAM]} bytes down"
        else:
            moved = (
                f"{datagrams[UPSTREAM]} datagrams ({counts[UPSTREAM]} bytes) up, "
                f"{datagrams[DOWNSTREAM]} datagrams ({counts[DOWNSTREAM]} bytes) down"
            )
        self.log.debug(
            "{route}{listener} {peer} -> {target}: {moved}, {duration:.3f}s, {how}",
            route=server.routePrefix,
            listener=describeAddress(listener),
            peer=describeAddress(peer),
            target=str(server.target),
            moved=moved,
            duration=self.clock.seconds() - served.started,
            how=served.ending.value if served.ending is not None else "done",
        )
