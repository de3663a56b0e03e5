"""
Profile socketproxyd under one load scenario with cProfile and print where
its time goes.

    python benchmarks/profile.py connections|requests|split|metrics [--seconds 4]
        [--data-path auto] [--unix-target] [--routed] [--rounds 3]
        [--control] [--no-bulk] [--tcp-only] [--alone]

C{connections} is the new-connection rate (C{Connection: close}),
C{requests} the keep-alive request rate through 64 connections; both with
wrk against a throwaway nginx, the proxy pinned to its own core.

C{split} runs the new-connection and bulk scenarios without a profiler
against the original (when installed), the floor (benchmarks/floor.py: the
same system calls from a bare Python loop) and socketproxyd, and prints
each one's user and system CPU time per connection and per GiB: where a
profile cannot tell system calls from the Python around them, this can.

C{metrics} is the cost of C{--metrics} (nothing scraping): CPU per new
connection of socketproxyd without and with it, to nginx on TCP and on its
UNIX socket. Both proxies run at once, side by side on the proxy core,
each loaded by its own wrk, for each of C{--rounds} rounds: this machine's
speed drifts by several per cent from one run to the next, and side by
side it weighs on both alike (a round's ratio of plain against plain
spreads by about 2 %, against 5 % one after the other). With C{--alone}
they run one after the other instead, in the order plain, metrics,
metrics, plain (each run leaves some 30,000 connections in TIME_WAIT for a
minute, which makes the next run's connects to a TCP target dearer). The
bulk streams (iperf3) always run one after the other. It then times the
collector's own calls inside one more running proxy
(C{benchmarks/timedexporter.py}). With C{--control} the second side is
plain too: what the same run measures between two sides that run the same
code is the noise a difference has to stand out of.
"""

from __future__ import annotations

import argparse
import math
import pstats
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    DIRECTIONS,
    GiB,
    Nginx,
    Route,
    _iperf,
    _wrk,
    ensureTools,
    iperfServer,
    measureCpu,
    proxyRoutes,
    socketproxyd,
    userAndSystemSeconds,
)

TIMED_EXPORTER = Path(__file__).resolve().parent / "timedexporter.py"
METRICS = "--metrics=tcp:0:interface=127.0.0.1"
"""
Metrics on, on a port of their own that nothing scrapes.
"""


def _connections(port: int, seconds: int, clients: int = 32) -> float:
    return _wrk(port, seconds, clients, True)[0] * seconds


def _gibibytes(port: int, seconds: int, extra: list[str]) -> float:
    return _iperf(port, seconds, extra)[1] / GiB


def split(
    seconds: int,
    dataPath: str,
    unixTarget: bool = False,
    routed: bool = False,
) -> None:
    """
    User and system CPU of each proxy per connection at its full
    new-connection rate (to nginx on TCP, or on its UNIX socket), and per
    GiB of one bulk stream each way; with C{routed}, socketproxyd also with
    its socket named and routed by C{--target=NAME=TARGET} (the cost of
    C{--metrics} is the C{metrics} scenario's, which pairs its runs).
    """
    routes = proxyRoutes(dataPath, floor=True)
    if routed:
        routes.append(socketproxyd("spx routed", dataPath, fdname="web"))
    if unixTarget:
        routes = [route for route in routes if route.unixTarget]

    def measure(
        route: Route, unit: str, scale: float, action: Callable[..., float], *args: object
    ) -> None:
        count, user, system = measureCpu(route, action, *args)
        print(
            f"  {route.name:13s} user {user / count * scale:7.3f}  "
            f"system {system / count * scale:7.3f}  {unit}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        nginx = Nginx(Path(tmp))
        target = nginx.unixPath if unixTarget else nginx.port
        print(f"new connections to {target} (wrk, Connection: close, 32 at a time):")
        try:
            for route in routes:
                port = route.start(target)
                try:
                    measure(route, "us/conn", 1e6, _connections, port, seconds)
                finally:
                    route.stop()
        finally:
            nginx.stop()
    if unixTarget:
        return
    with iperfServer() as serverPort:
        for label, extra in DIRECTIONS:
            print(f"bulk {label} (iperf3, one stream):")
            for route in routes:
                port = route.start(serverPort)
                try:
                    measure(route, "s/GiB", 1.0, _gibibytes, port, seconds, extra)
                finally:
                    route.stop()


def compared(
    rounds: int,
    sides: tuple[Route, Route],
    target: int | str,
    unit: str,
    perUnit: Callable[[int], float],
    together: bool = False,
) -> dict[str, float]:
    """
    User and system CPU of each of two proxies per unit of C{perUnit(port)}
    (which loads the proxy on C{port} and says how many units it moved),
    for each of C{rounds} rounds: one after the other in the order A, B, B,
    A, or with C{together} both at once, side by side on the proxy core,
    each loaded by its own C{perUnit}, so that whatever the machine does
    then weighs on both alike (the order they start in alternating by
    round). Each run's figures are printed, then each side's medians and
    how the second side's total differs, by all runs and round by round
    (a round's ratio: its runs of the second side over the first's). The
    median total of each side.
    """
    cpu: dict[str, list[tuple[float, float]]] = {side.name: [] for side in sides}
    first, second = sides
    ratios = []
    for round in range(rounds):
        if together:
            runs = _run(sides if round % 2 == 0 else (second, first), target, perUnit)
        else:
            runs = [run for side in (first, second, second, first)
                    for run in _run((side,), target, perUnit)]  # fmt: skip
        thisRound = dict.fromkeys(cpu, 0.0)
        for name, user, system in runs:
            cpu[name].append((user, system))
            thisRound[name] += user + system
            print(f"  round {round + 1} {name:8s} user {user:8.3f}  "
                  f"system {system:8.3f}  {unit}")  # fmt: skip
        ratios.append(thisRound[second.name] / thisRound[first.name])
    totals = {}
    for name, runs in cpu.items():
        user = statistics.median(u for u, _ in runs)
        totals[name] = statistics.median(u + s for u, s in runs)
        print(f"  median {name:8s} user {user:8.3f}  total {totals[name]:8.3f}  {unit}")
    change = totals[second.name] / totals[first.name] - 1
    print(f"  {second.name} against {first.name}: total {100 * change:+.1f} %")
    low, middle, high, coverage = pairedChange(ratios)
    print(f"  {second.name} against {first.name}, round by round: median {middle:+.1f} %, "
          f"{coverage:.1f} % interval {low:+.1f} % to {high:+.1f} % ({rounds} rounds)")  # fmt: skip
    return totals


def _run(
    sides: tuple[Route, ...], target: int | str, perUnit: Callable[[int], float]
) -> list[tuple[str, float, float]]:
    """
    One run of C{sides} at once (started in that order), each loaded by
    its own C{perUnit}: each one's name, user and system CPU a unit.
    """
    try:
        ports = {side.name: side.start(target) for side in sides}
        before = {side.name: userAndSystemSeconds(side.pid) for side in sides}
        with ThreadPoolExecutor(len(sides)) as pool:
            loads = {name: pool.submit(perUnit, port) for name, port in ports.items()}
            units = {name: load.result() for name, load in loads.items()}
        after = {side.name: userAndSystemSeconds(side.pid) for side in sides}
    finally:
        for side in sides:
            side.stop()
    return [
        (name, (after[name][0] - before[name][0]) / moved,
         (after[name][1] - before[name][1]) / moved)
        for name, moved in units.items()
    ]  # fmt: skip


def pairedChange(ratios: list[float]) -> tuple[float, float, float, float]:
    """
    The median of C{ratios} (one a round: the second side's CPU over the
    first's, measured next to each other) as a change in per cent, with a
    distribution-free interval around it (order statistics of the
    binomial) and that interval's coverage in per cent: at least 95 from
    6 rounds on, less below (the lowest and highest ratio then). A change
    between runs of the machine cancels out within a round, where it
    moves both sides' medians of all runs.
    """
    ordered = sorted(ratios)
    count = len(ordered)

    def atMost(rank: int) -> float:
        return sum(math.comb(count, i) for i in range(rank + 1)) / 2**count

    lowest = 0
    while lowest + 1 < count / 2 and atMost(lowest + 1) <= 0.025:
        lowest += 1
    return (
        100 * (ordered[lowest] - 1),
        100 * (statistics.median(ordered) - 1),
        100 * (ordered[count - 1 - lowest] - 1),
        100 * (1 - 2 * atMost(lowest)),
    )


def metricsCost(
    seconds: int,
    dataPath: str,
    rounds: int,
    targets: tuple[str, ...] = ("TCP", "UNIX"),
    control: bool = False,
    bulk: bool = True,
    alone: bool = False,
) -> None:
    """
    CPU per new connection (to nginx on TCP and on its UNIX socket) and
    per GiB (one bulk stream each way) of socketproxyd without and with
    C{--metrics} (L{compared}): new connections side by side (16 wrk
    clients each), or with C{alone} one after the other (32), the bulk
    streams one after the other; after each new-connection scenario, the
    collector's own time per connection, timed inside one more running
    proxy alone (C{benchmarks/timedexporter.py}, 32 clients), and its
    share of plain's CPU in the runs before. New connections go to nginx on each
    of C{targets} (on UNIX a connection costs the least, so the collector's
    share is the largest); with C{control}, plain against plain; without
    C{bulk}, new connections only.
    """
    plain = socketproxyd("plain", dataPath)
    metrics = (
        socketproxyd("plain2", dataPath) if control else socketproxyd("metrics", dataPath, METRICS)
    )
    with tempfile.TemporaryDirectory() as tmp:
        spentFile = Path(tmp) / "exporter"
        timed = Route(
            "timed",
            ["env", f"SPX_TIMED_EXPORTER={spentFile}", sys.executable, str(TIMED_EXPORTER),
             "-c", "20000", f"--data-path={dataPath}", METRICS],
        )  # fmt: skip
        nginx = Nginx(Path(tmp))
        try:
            addresses = {"TCP": nginx.port, "UNIX": nginx.unixPath}
            for label in targets:
                target = addresses[label]
                how = "one after the other" if alone else "side by side"
                print(f"new connections to nginx on {label} (wrk, Connection: close), {how}:")
                totals = compared(
                    rounds,
                    (plain, metrics),
                    target,
                    "us/conn",
                    lambda port: _connections(port, seconds, 32 if alone else 16) / 1e6,
                    together=not alone,
                )
                port = timed.start(target)
                try:
                    _connections(port, seconds)
                finally:
                    timed.stop()
                own = 0.0
                for line in spentFile.read_text().splitlines():
                    name, calls, mean = line.split()
                    own += float(mean) / 1000
                    print(f"  the collector's {name}: {mean} ns a call ({calls} calls)")
                print(f"  the collector's own: {own:.2f} us a connection, "
                      f"{100 * own / totals['plain']:.1f} % of plain's CPU above")  # fmt: skip
        finally:
            nginx.stop()
    if not bulk:
        return
    with iperfServer() as serverPort:
        for label, extra in DIRECTIONS:
            print(f"bulk {label} (iperf3, one stream):")
            compared(
                rounds,
                (plain, metrics),
                serverPort,
                "s/GiB",
                lambda port, extra=extra: _gibibytes(port, seconds, extra),
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["connections", "requests", "split", "metrics"])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--data-path", default="auto")
    parser.add_argument(
        "--unix-target",
        action="store_true",
        help="new connections to nginx's UNIX socket (metrics: only those)",
    )
    parser.add_argument(
        "--routed", action="store_true", help="split: also socketproxyd with a named route"
    )
    parser.add_argument("--rounds", type=int, default=3, help="metrics: rounds to pair")
    parser.add_argument(
        "--control", action="store_true", help="metrics: plain against plain, the noise floor"
    )
    parser.add_argument("--no-bulk", action="store_true", help="metrics: new connections only")
    parser.add_argument(
        "--tcp-only", action="store_true", help="metrics: new connections to TCP only"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="metrics: each proxy loaded alone, one after the other (not side by side)",
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", help="also save the raw profile to this file")
    parser.add_argument("--callers", help="also print the callers of functions matching this")
    args = parser.parse_args(argv)
    ensureTools()
    if args.scenario == "split":
        split(args.seconds, args.data_path, args.unix_target, args.routed)
        return
    if args.scenario == "metrics":
        targets = ("UNIX",) if args.unix_target else ("TCP",) if args.tcp_only else ("TCP", "UNIX")
        bulk = not (args.no_bulk or args.unix_target or args.tcp_only)
        metricsCost(
            args.seconds, args.data_path, args.rounds, targets, args.control, bulk, args.alone
        )
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
            port = route.start(nginx.unixPath if args.unix_target else nginx.port)
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
