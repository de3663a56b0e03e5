# -*- test-case-name: tests.test_routes -*-
"""
Opening the listeners: the inherited sockets, then every C{--listen}
endpoint, each with its name and on the factory of its route (all routed
before any is opened); and the one-line exit when that cannot be done.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from .activation import ActivationError, InheritedSocket, adopt
from .proxy import ProxyFactory
from .routes import splitListen


class StartupError(Exception):
    """
    The proxy cannot start; the message says why and what to do.
    """


def exitAtStartup(reason: str) -> NoReturn:
    """
    Exit 1 with one line on the process's own stderr: under twistd the
    runner has put its log in C{sys.stderr}'s place by the time services
    start, and a start-up error is for the operator starting it.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"socketproxyd: {reason}\n")
    stream.flush()
    raise SystemExit(1)


@dataclass(frozen=True)
class Listener:
    """
    One open listener: its port, how log lines call it, its name (if it
    has one) and the factory of its route.
    """

    port: IListeningPort
    label: str
    name: str | None
    factory: ProxyFactory


FactoryFor = Callable[[str | None, str], ProxyFactory]
"""
Gives the factory for the listeners of a name, given a label to name the
listener in an error (L{RouteError} when no route serves it).
"""


@dataclass(frozen=True)
class PlannedListener:
    """
    A listener to open: how log lines call it, its name, the factory of
    its route, and what opens it.
    """

    label: str
    name: str | None
    factory: ProxyFactory
    opener: Callable[[], IListeningPort]

    def open(self) -> Listener:
        return Listener(self.opener(), self.label, self.name, self.factory)


def planListeners(
    reactor: object,
    inherited: Sequence[InheritedSocket],
    descriptions: Sequence[str],
    factoryFor: FactoryFor,
) -> list[PlannedListener]:
    """
    Route every inherited socket and C{[NAME=]ENDPOINT} of C{descriptions}
    before anything is opened, so a routing error opens nothing.

    @raise RouteError: naming the listener no route serves, or a bad name.
    """
    plan = []
    for sock in inherited:
        label = sock.describe()
        factory = factoryFor(sock.name, label)
        opener = partial(adopt, reactor, sock, factory)
        plan.append(PlannedListener(label, sock.name, factory, opener))
    for text in descriptions:
        name, description = splitListen(text)
        factory = factoryFor(name, f"--listen={text}")
        opener = partial(_listen, reactor, description, factory)
        plan.append(PlannedListener(text, name, factory, opener))
    return plan


def openListeners(plan: Sequence[PlannedListener]) -> list[Listener]:
    """
    Open every planned listener.

    @raise StartupError: saying which listener cannot be opened, once what
        was opened is closed again.
    """
    opened: list[Listener] = []
    try:
        for planned in plan:
            opened.append(planned.open())
    except (ActivationError, StartupError) as e:
        for listener in opened:
            listener.port.stopListening()
        raise StartupError(str(e)) from None
    return opened


def _listen(reactor: object, description: str, factory: ProxyFactory) -> IListeningPort:
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise StartupError(
            f"--listen={description}: not a server endpoint ({e}); "
            f"use e.g. tcp:8080:interface=127.0.0.1 or unix:/run/app.sock"
        ) from None
    outcome: list[object] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise StartupError(f"--listen={description}: did not bind at once")
    if isinstance(outcome[0], Failure):
        reason = outcome[0].getErrorMessage()
        raise StartupError(f"--listen={description}: cannot listen: {reason}")
    return outcome[0]
