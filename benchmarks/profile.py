"""
Profile socketproxyd under one load scenario with cProfile and print where
its time goes.

    python benchmarks/profile.py connections|requests [--seconds 4] [--data-path auto]

C{connections} is the new-connection rate (C{Connection: close}),
C{requests} the keep-alive request rate through 64 connections; both with
wrk against a throwaway nginx, the proxy pinned to its own core.
"""

from __future__ import annotations

import argparse
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Nginx, Route, _wrk, ensureTools  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["connections", "requests"])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--data-path", default="auto")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", help="also save the raw profile to this file")
    parser.add_argument("--callers", help="also print the callers of functions matching this")
    args = parser.parse_args(argv)
    ensureTools()
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
