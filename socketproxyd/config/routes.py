# -*- test-case-name: tests.unit.test_routes -*-
"""
Routes: which target the connections of each listener go to.

A listener has a name: the one systemd gives an inherited socket
(C{FileDescriptorName=}, passed in C{LISTEN_FDNAMES}), or the one given in
C{--listen=NAME=ENDPOINT}. C{--target=NAME=TARGET} sends the connections of
the listeners of that name to TARGET; the positional TARGET serves every
listener no C{--target} names. Names follow systemd's rule for fd names:
1 to 255 printable ASCII characters, no C{:}.
"""

from __future__ import annotations

from collections.abc import Mapping

from socketproxyd.config.target import Target, parseTarget

UNNAMED = "unknown"
"""
The name C{sd_listen_fds_with_names} gives sockets passed without
C{LISTEN_FDNAMES}: not a name an operator chose, so not one log lines show.
"""


def prefixFor(route: str | None) -> str:
    """
    What leads the log lines about a route's connections: its name.
    """
    return f"{route}: " if route is not None else ""


class RouteError(ValueError):
    """
    A route cannot be made; the message says which and why.
    """


def checkName(name: str, option: str) -> str:
    """
    C{name} if it is a valid listener name.

    @raise RouteError: naming C{option} and the rule.
    """
    if not name or len(name) > 255 or ":" in name or not all(" " < c <= "~" for c in name):
        raise RouteError(
            f"{option}: {name!r} is not a listener name "
            f"(1-255 printable ASCII characters, no ':' or spaces)"
        )
    return name


def parseNamedTarget(text: str) -> tuple[str, Target]:
    """
    Parse C{--target=NAME=TARGET}, split at the first C{=}.
    """
    name, sep, targetText = text.partition("=")
    if not sep:
        raise RouteError(f"--target={text}: give NAME=TARGET, e.g. --target=web=/run/nginx.sock")
    checkName(name, f"--target={text}")
    try:
        return name, parseTarget(targetText)
    except ValueError as e:
        raise RouteError(f"--target={text}: {e}") from None


def splitListen(text: str) -> tuple[str | None, str]:
    """
    Split C{--listen=[NAME=]ENDPOINT}: the text before the first C{=} is a
    name unless it holds a C{:}, as every endpoint's type does
    (C{tcp:8080:interface=::1} has no name, C{web=tcp:8080} has).
    """
    name, sep, description = text.partition("=")
    if sep and ":" not in name:
        return checkName(name, f"--listen={text}"), description
    return None, text


class Routes:
    """
    The target of each listener name (see the module docstring).

    @ivar default: the positional TARGET, or C{None}.
    @ivar named: the targets of C{--target=NAME=TARGET}, by name.
    """

    def __init__(self, default: Target | None = None, named: Mapping[str, Target] = {}) -> None:
        self.default = default
        self.named = dict(named)

    def targetFor(self, name: str | None, label: str) -> Target:
        """
        The target of a listener called C{name}, described as C{label}.

        @raise RouteError: when nothing serves it.
        """
        if name in self.named:
            return self.named[name]
        if self.default is None:
            hint = f"--target={name}=TARGET"
            if name is None or name == UNNAMED:
                how = "FileDescriptorName=" if name else "NAME=ENDPOINT"
                hint = f"name it ({how}) and give --target=NAME=TARGET"
            raise RouteError(f"{label} has no target: give TARGET, or {hint}")
        return self.default

    def checkUsed(self, names: set[str | None]) -> None:
        """
        Every C{--target} NAME belongs to a listener among C{names}.

        @raise RouteError: naming the first that does not.
        """
        for name in self.named:
            if name in names:
                continue
            known = ", ".join(sorted(n for n in names if n))
            if not known:
                passed = "no listener has a name" if names else "no socket was passed"
                raise RouteError(
                    f"--target={name}=...: no listener is named {name!r} ({passed}): pass one "
                    f"named {name} (FileDescriptorName={name} in its .socket unit) or give "
                    f"--listen={name}=ENDPOINT"
                )
            raise RouteError(
                f"--target={name}=...: no listener is named {name!r} (listener names: {known})"
            )

    def __str__(self) -> str:
        parts = [f"{name}={target}" for name, target in self.named.items()]
        if self.default is not None:
            parts.append(str(self.default))
        return ", ".join(parts)
