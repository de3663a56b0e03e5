"""
Datagram forwarding, side by side: a direct path, socketproxyd and socat
(C{UDP4-RECVFROM:PORT,fork UDP4-SENDTO:...}, the usual alternative), in the
same run, with small (64 B) and large (1400 B) datagrams.

    python benchmarks/datagrams.py [--seconds 5] [--runs 3]
    unshare --net sh -c 'ip link set lo up && python benchmarks/datagrams.py --wildcard'

One iperf3 UDP stream at full speed (C{-u -b 0}) through each path: the
datagrams the server received per second, and the forwarder's CPU seconds
per million of them; and DNS as it is used, dnsperf with 50 clients (source
ports) against dnsmasq: queries answered per second, CPU per million.
iperf3's control connection is TCP on the same port:
socketproxyd forwards it through a stream socket of the same name (as
C{ListenStream=} and C{ListenDatagram=} in one socket unit give), socat
through a second socat. Each forwarder is pinned to one core, iperf3 to the
other. Installs iperf3 and socat from Debian when they are missing.

C{--wildcard} adds socketproxyd on a datagram socket bound to 0.0.0.0, as
C{ListenDatagram=PORT} gives (each datagram's destination read with
C{recvmsg}, each reply sent from it with C{sendmsg}); run it in a network
namespace of its own, as above, so that the wildcard covers C{lo} only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import LOAD_CORE, PROXY_CORE, REPO, iperfServer, userAndSystemSeconds  # noqa: E402

SIZES = (64, 1400)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def cpuSeconds(pid: int) -> float:
    """
    User and system CPU seconds of C{pid} and its live children.
    """
    total = 0.0
    for each in [pid, *children(pid)]:
        try:
            total += sum(userAndSystemSeconds(each))
        except OSError:
            continue
    return total


class Forwarder:
    """
    One way from iperf3's client to its server.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: list[subprocess.Popen] = []

    def start(self, server: int) -> int:
        return server

    def cpu(self) -> float:
        return 0.0

    def stop(self) -> None:
        for process in self.processes:
            for child in children(process.pid):
                try:
                    os.kill(child, signal.SIGTERM)
                except OSError:
                    pass
            process.terminate()
            process.wait(10)
        self.processes = []


class SocketProxyd(Forwarder):
    """
    socketproxyd with a TCP and a UDP socket on one port, both named
    C{iperf}, as a socket unit with C{ListenStream=} and C{ListenDatagram=}
    passes them; the datagram socket bound to C{host}.
    """

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        super().__init__(name)
        self.host = host

    def start(self, server: int) -> int:
        stream = socket.socket()
        stream.bind(("127.0.0.1", 0))
        stream.listen(128)
        port = stream.getsockname()[1]
        dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dgram.bind((self.host, port))
        fds = [stream.fileno(), dgram.fileno()]

        def place() -> None:
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)

        env = dict(os.environ, PYTHONPATH=str(REPO), LISTEN_FDS="2", LISTEN_FDNAMES="iperf:iperf")
        self.processes.append(
            subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    PROXY_CORE,
                    "sh",
                    "-c",
                    'LISTEN_PID=$$; export LISTEN_PID; exec "$@"',
                    "launcher",
                    sys.executable,
                    "-m",
                    "socketproxyd",
                    f"127.0.0.1:{server}",
                ],
                env=env,
                preexec_fn=place,
                close_fds=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        )
        stream.close()
        dgram.close()
        time.sleep(1.0)
        return port

    def cpu(self) -> float:
        return cpuSeconds(self.processes[0].pid)


class Socat(Forwarder):
    """
    socat, one process forking a child per datagram source, and one more
    for iperf3's TCP control connection (its CPU is not counted).
    """

    def start(self, server: int) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        for address in (
            [
                f"UDP4-RECVFROM:{port},bind=127.0.0.1,fork,reuseaddr",
                f"UDP4-SENDTO:127.0.0.1:{server}",
            ],
            [f"TCP4-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"TCP4:127.0.0.1:{server}"],
        ):
            self.processes.append(
                subprocess.Popen(
                    ["taskset", "-c", PROXY_CORE, "socat", "-T", "10", *address],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
        time.sleep(0.5)
        return port

    def cpu(self) -> float:
        return cpuSeconds(self.processes[0].pid)


def iperfUdp(port: int, size: int, seconds: int) -> int:
    """
    One full-speed UDP stream of C{size}-byte datagrams; how many the
    server received.
    """
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-u",
         "-b", "0", "-l", str(size), "-t", str(seconds), "-J"],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    parsed = json.loads(out.stdout)
    if "error" in parsed:
        raise RuntimeError(f"iperf3: {parsed['error']}")
    return int(parsed["end"]["sum_received"]["bytes"]) // size


class Dnsmasq:
    """
    dnsmasq on the load core, answering one name from a hosts file.
    """

    def __init__(self, directory: Path) -> None:
        (directory / "hosts").write_text("192.0.2.7 web.test\n")
        (directory / "queries").write_text("web.test A\n")
        self.queries = directory / "queries"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
             "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
             f"--addn-hosts={directory}/hosts", "--port", str(self.port), "--pid-file=",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--cache-size=1000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def dnsperf(port: int, queries: Path, seconds: int) -> int:
    """
    dnsperf with 50 clients (source ports) for C{seconds}; queries answered.
    """
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
         "-d", str(queries), "-c", "50", "-q", "200", "-l", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    for line in out.stdout.splitlines():
        if "Queries completed:" in line:
            return int(line.split()[2])
    raise RuntimeError(f"dnsperf: {out.stdout[-500:]} {out.stderr[-500:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wildcard", action="store_true", help="add a wildcard-bound listener")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("iperf3", "socat", "dnsperf") if not shutil.which(tool)]
    if not os.access("/usr/sbin/dnsmasq", os.X_OK):
        missing.append("dnsmasq-base")
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True)
    paths = [Forwarder("direct"), SocketProxyd("socketproxyd"), Socat("socat")]
    if args.wildcard:
        paths.insert(2, SocketProxyd("spx 0.0.0.0", "0.0.0.0"))
    rates: dict[tuple[int, str], list[float]] = {}
    cpus: dict[tuple[int, str], list[float]] = {}

    def measure(key: str, path: Forwarder, server: int, action: Callable[[int], int]) -> None:
        port = path.start(server)
        try:
            before = path.cpu()
            delivered = action(port)
            used = path.cpu() - before
        finally:
            path.stop()
        rates.setdefault((key, path.name), []).append(delivered / args.seconds)
        if path.name != "direct" and delivered:
            cpus.setdefault((key, path.name), []).append(used / delivered * 1e6)

    with tempfile.TemporaryDirectory() as tmp, iperfServer() as server:
        dns = Dnsmasq(Path(tmp))
        try:
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs} ...", file=sys.stderr)
                for size in SIZES:
                    for path in paths:
                        measure(
                            f"{size} B", path, server,
                            lambda port, size=size: iperfUdp(port, size, args.seconds),
                        )  # fmt: skip
                for path in paths:
                    measure(
                        "DNS, 50 clients", path, dns.port,
                        lambda port: dnsperf(port, dns.queries, args.seconds),
                    )  # fmt: skip
        finally:
            dns.stop()
    names = [path.name for path in paths]
    print(f"\nmedians of {args.runs} run(s) of {args.seconds} s, forwarders on core {PROXY_CORE}\n")
    header = ["load", "metric", *names, "spx/socat"]
    rows = [header]
    for key in [f"{size} B" for size in SIZES] + ["DNS, 50 clients"]:
        for label, table, fmt in (
            ("datagrams/s" if key.endswith("B") else "queries/s", rates, "{:,.0f}"),
            ("CPU s per million", cpus, "{:.2f}"),
        ):
            medians = {n: statistics.median(table[key, n]) for n in names if (key, n) in table}
            row = [key, label] + [fmt.format(medians[n]) if n in medians else "-" for n in names]
            ratio = medians.get("socketproxyd", 0) / medians["socat"] if medians.get("socat") else 0
            row.append(f"{ratio:.2f}x" if ratio else "-")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
