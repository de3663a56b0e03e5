"""
User-space instructions per new connection, counted by callgrind: the
cost of C{--metrics} where CPU times are too noisy to tell it.

    python benchmarks/instructions.py [--connections 2000] [--tcp-target]

Runs socketproxyd under C{valgrind --tool=callgrind} in front of nginx (on
its UNIX socket, or on TCP), without and with C{--metrics} (nothing
scraping), and makes new connections to it one after another (a request
with C{Connection: close}, read to the end): once a few and once
C{--connections} more. The difference of the two runs' instruction counts,
divided by the difference of their lengths, is what one connection costs in
the proxy's own code, start-up and shutdown cancelled out. With
C{--metrics}, each run ends with one scrape: work the collector leaves from
a close for the next scrape is counted with the connections it is for.

Two runs of the same code differ by well under 1 %, where the CPU time of
one new connection (C{profile.py metrics}) differs by up to 10 % between
runs on this kind of machine. Instructions are not time: the kernel's
share of a connection (half of its CPU) is not counted, and an instruction
that misses the cache costs more than one that hits; the figure bounds the
Python work the option adds, the C{profile.py metrics} figures its time.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Nginx, Route, ensureTools, freePort  # noqa: E402
from scrape import scrape  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
FEW = 200
"""
The connections of the short run: enough to warm every path once.
"""


def connectAll(port: int, count: int, seconds: float) -> int:
    """
    Make C{count} connections to the proxy on C{port}, one after another,
    each one request read to its end (within C{seconds} in all); how many
    were answered.
    """
    deadline = time.monotonic() + seconds
    answered = 0
    for _ in range(count):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {answered} of {count} connections within {seconds} s")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(REQUEST)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        if reply.startswith(b"HTTP/1.1 200"):
            answered += 1
    return answered


PROXY = [sys.executable, "-m", "socketproxyd"]


def instructions(target: int | str, count: int, out: Path, metricsPort: int | None) -> int:
    """
    The instructions callgrind counted in socketproxyd, from its start to
    its exit, serving C{count} connections; with C{metricsPort}, with
    C{--metrics} there and one scrape at the end. callgrind's profile is
    left in C{out}.
    """
    options = [] if metricsPort is None else [f"--metrics=tcp:{metricsPort}:interface=127.0.0.1"]
    route = Route(
        "socketproxyd",
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
         *PROXY, "-c", "20000", *options],
    )  # fmt: skip
    port = route.start(target)
    try:
        answered = connectAll(port, count, 600)
        if answered != count:
            raise RuntimeError(f"{count - answered} of {count} connections not answered")
        if (
            metricsPort is not None
            and b"socketproxyd_connections_total" not in scrape(metricsPort)[1]
        ):
            raise RuntimeError("the scrape has no socketproxyd_connections_total")
    finally:
        route.stop(timeout=120)
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--tcp-target", action="store_true", help="nginx on TCP, not UNIX")
    parser.add_argument("--repeat", type=int, default=1, help="measure each side this often")
    args = parser.parse_args(argv)
    ensureTools()
    if shutil.which("valgrind") is None:
        sys.exit("benchmarks/instructions.py needs valgrind (apt-get install valgrind)")
    metricsPort = freePort()
    sides = {"plain": None, "--metrics": metricsPort}
    perConnection: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        nginx = Nginx(Path(tmp))
        target = nginx.port if args.tcp_target else nginx.unixPath
        try:
            for _ in range(args.repeat):
                for name, port in sides.items():
                    counts = [
                        instructions(target, count, Path(tmp) / f"callgrind.{count}", port)
                        for count in (FEW, FEW + args.connections)
                    ]
                    each = (counts[1] - counts[0]) / args.connections
                    perConnection[name].append(each)
                    print(f"  {name:9s} {each:10,.0f} instructions a connection")
        finally:
            nginx.stop()
    plain, metrics = (min(perConnection[name]) for name in sides)
    where = "TCP" if args.tcp_target else "UNIX"
    print(
        f"new connections to nginx on {where}, {args.connections} one after another: "
        f"plain {plain:,.0f}, --metrics {metrics:,.0f} instructions a connection "
        f"({100 * (metrics / plain - 1):+.1f} %)"
    )


if __name__ == "__main__":
    main()
