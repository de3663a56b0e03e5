"""
Profile socketproxyd under one load scenario with cProfile and print where
its time goes.

    python benchmarks/profile.py connections|requests|split [--seconds 4] [--data-path auto]

C{connections} is the new-connection rate (C{Connection: close}),
C{requests} the keep-alive request rate through 64 connections; both with
wrk against a throwaway nginx, the proxy pinned to its own core.

C{split} runs the new-connection scenario without a profiler against the
original (when installed) and socketproxyd, and prints each one's user and
system CPU time per connection: where a profile cannot tell system calls
from the Python around them, this can.
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ORIGINAL, Nginx, Route, _wrk, ensureTools, userAndSystemSeconds  # noqa: E402


def split(seconds: int, dataPath: str) -> None:
    """
    User and system CPU per connection of each proxy at its full
    new-connection rate.
    """
    routes = [
        Route("socketproxyd", [sys.executable, "-m", "socketproxyd", f"--data-path={dataPath}"])
    ]
    if os.access(ORIGINAL, os.X_OK):
        routes.insert(0, Route("original", [ORIGINAL, "-c", "20000"]))
    with tempfile.TemporaryDirectory() as tmp:
        nginx = Nginx(Path(tmp))
        try:
            for route in routes:
                port = route.start(nginx.port)
                try:
                    userBefore, systemBefore = userAndSystemSeconds(route.pid)
                    rate, _ = _wrk(port, seconds, 32, True)
                    user, system = userAndSystemSeconds(route.pid)
                finally:
                    route.stop()
                count = rate * seconds
                print(
                    f"{route.name:13s} {rate:8,.0f} conn/s  "
                    f"user {(user - userBefore) / count * 1e6:6.1f} us/conn  "
                    f"system {(system - systemBefore) / count * 1e6:6.1f} us/conn"
                )
        finally:
            nginx.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["connections", "requests", "split"])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--data-path", default="auto")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", help="also save the raw profile to this file")
    parser.add_argument("--callers", help="also print the callers of functions matching this")
    args = parser.parse_args(argv)
    ensureTools()
    if args.scenario == "split":
        split(args.seconds, args.data_path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "proxy.prof"
        nginx = Nginx(Path(tmp))
        route = Route(
            "socketproxyd",
            [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "socketproxyd",
             f"--data-path={args.data_path}"],
        )  # fmt: skip
        try:
            port = route.start(nginx.port)
            close = args.scenario == "connections"
            rate, p99 = _wrk(port, args.seconds, 32 if close else 64, close)
            route.stop()
        finally:
            route.stop()
            nginx.stop()
        print(f"{args.scenario}: {rate:,.0f}/s under cProfile (p99 {p99:.2f} ms)\n")
        stats = pstats.Stats(str(output))
        if args.keep:
            stats.dump_stats(args.keep)
        stats.sort_stats("tottime").print_stats(args.top)
        if args.callers:
            stats.print_callers(args.callers)


if __name__ == "__main__":
    main()
