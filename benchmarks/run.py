"""
Side-by-side benchmarks: a direct connection, the C original
(systemd-socket-proxyd, when installed) and socketproxyd, in the same run,
on loopback, each proxy pinned to one core.

    python benchmarks/run.py [--quick] [--runs N] [--only NAME,...] [--data-path auto] [--floor]
        [--pipe-sizes 64K,256K,1M]

Installs iperf3, wrk and nginx from Debian when missing (as root), starts
every process itself, bounds every step in time, and prints a table of
medians with ratios to the direct connection and to the original.

C{--floor} adds benchmarks/floor.py to the throughput scenarios: the same
system calls as socketproxyd from a bare Python loop, which shows how much
of a gap to the original is Python's and how much Twisted's and ours.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from activation import NAMES as ACTIVATION_NAMES  # noqa: E402
from activation import activation  # noqa: E402

ORIGINAL = "/lib/systemd/systemd-socket-proxyd"
FLOOR = REPO / "benchmarks" / "floor.py"
PROXY_CORE = "1"
LOAD_CORE = "0"
GiB = 1 << 30
MiB = 1 << 20
TOOLS = {"iperf3": "iperf3", "wrk": "wrk", "nginx": "nginx-light"}
SERVICE_HARD_LIMIT = min(524288, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
"""
systemd's default LimitNOFILE= is 1024:524288; a sandbox may cap the hard
limit lower, and then that cap is used.
"""


def ensureTools() -> None:
    """
    Install the load generators and nginx from Debian if they are missing.
    """
    missing = [pkg for tool, pkg in TOOLS.items() if not shutil.which(tool) and not _sbin(tool)]
    if not shutil.which("systemd-socket-activate"):
        missing.append("systemd")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"benchmarks: install {' '.join(missing)} first (apt-get needs root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _sbin(tool: str) -> str | None:
    path = Path("/usr/sbin") / tool
    return str(path) if path.exists() else None


_LAUNCHERS = ("prlimit", "taskset", "sh", "dash", "bash", "env")


def freePort() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def waitForListener(port: int, timeout: float = 10.0) -> None:
    """
    Wait until something listens on C{port}, without connecting (a probe
    connection would confuse iperf3's control protocol).
    """
    suffix = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    if local.endswith(suffix) and state == "0A":
                        return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def userAndSystemSeconds(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fdCount(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Route:
    """
    One way of reaching the backend: direct, through the original, or
    through socketproxyd.
    """

    name: str
    command: list[str] | None
    unixTarget: bool = True
    """
    Whether it can reach a UNIX socket backend (wrk cannot connect to one
    directly, and the floor takes only IPv4 targets).
    """
    fdname: str | None = None
    """
    With a name, the listening socket is passed under it (LISTEN_FDNAMES)
    and the target given as C{--target=NAME=TARGET}: a routed proxy.
    """
    process: subprocess.Popen | None = None
    port: int = 0

    def start(self, backend: int | str) -> int:
        """
        Start the proxy in front of the backend (a port on 127.0.0.1, or the
        path of a UNIX socket) as systemd would (a listening socket on fd 3,
        LISTEN_* set, systemd's default fd limits), pinned to its core; wait
        until it has started; the port clients use.
        """
        if isinstance(backend, str) and not self.unixTarget:
            raise ValueError(f"{self.name} cannot reach the UNIX socket {backend}")
        if self.command is None:
            return backend
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        self.port = listener.getsockname()[1]
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notifyName = f"spx-bench-{os.getpid()}-{self.port}"
        notify.bind("\0" + notifyName)
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            LISTEN_FDS="1",
            NOTIFY_SOCKET="@" + notifyName,
        )
        fd = listener.fileno()
        target = backend if isinstance(backend, str) else f"127.0.0.1:{backend}"
        if self.fdname is not None:
            env["LISTEN_FDNAMES"] = self.fdname
            target = f"--target={self.fdname}={target}"
        self.process = subprocess.Popen(
            ["prlimit", f"--nofile=1024:{SERVICE_HARD_LIMIT}", "taskset", "-c", PROXY_CORE,
             "sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "launcher",
             *self.command, target],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=lambda: os.dup2(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100), 3),
        )  # fmt: skip
        listener.close()
        deadline = time.monotonic() + 20
        while os.path.basename(os.readlink(f"/proc/{self.process.pid}/exe")) in _LAUNCHERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        notify.settimeout(1.0 if self.name == "original" else 20.0)
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
        except TimeoutError:
            pass
        notify.close()
        return self.port

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = 10) -> None:
        """
        Stop the proxy with SIGTERM, killing it after C{timeout} seconds.
        """
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@dataclass
class Results:
    """
    Samples per scenario metric and path.
    """

    samples: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)

    def add(self, metric: str, unit: str, path: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault((metric, unit), {}).setdefault(path, []).append(value)

    def table(self, paths: list[str]) -> str:
        header = ["metric", "unit", *paths]
        if "direct" in paths:
            header.append("spx/direct")
        if "original" in paths:
            header.append("spx/original")
        if "floor" in paths and "original" in paths:
            header.append("floor/original")
        rows = [header]
        for (metric, unit), byPath in self.samples.items():
            medians = {p: statistics.median(v) for p, v in byPath.items() if v}
            row = [metric, unit] + [_fmt(medians.get(p)) for p in paths]
            ratios = [("socketproxyd", "direct"), ("socketproxyd", "original")]
            if "floor" in paths:
                ratios.append(("floor", "original"))
            for path, reference in ratios:
                if reference in paths:
                    value, base = medians.get(path), medians.get(reference)
                    row.append(f"{value / base:.2f}x" if value is not None and base else "-")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def asJson(self) -> dict:
        return {
            f"{metric} [{unit}]": {p: statistics.median(v) for p, v in byPath.items()}
            for (metric, unit), byPath in self.samples.items()
        }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


class Nginx:
    """
    A throwaway nginx on loopback and on a UNIX socket in C{workdir}, pinned
    to the load core, serving a small page and a large file.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = freePort()
        self.unixPath = str(workdir / "nginx.sock")
        workdir.chmod(0o755)
        root = workdir / "www"
        root.mkdir()
        (root / "index.html").write_bytes(b"x" * 612)
        with open(root / "big", "wb") as f:
            f.truncate(1 << 30)
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
worker_rlimit_nofile {SERVICE_HARD_LIMIT};
events {{ worker_connections 30000; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    sendfile on;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        listen unix:{self.unixPath} backlog=4096;
        root {root};
    }}
}}
"""
        )
        nginx = shutil.which("nginx") or _sbin("nginx")
        self.process = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, nginx, "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        waitForListener(self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def measureCpu(
    path: Route, action: Callable[..., object], *args: object
) -> tuple[object, float, float]:
    """
    Run C{action(*args)}; its result and the proxy's user and system CPU
    seconds meanwhile.
    """
    before = userAndSystemSeconds(path.pid) if path.pid else (0.0, 0.0)
    value = action(*args)
    after = userAndSystemSeconds(path.pid) if path.pid else (0.0, 0.0)
    return value, after[0] - before[0], after[1] - before[1]


def _iperf(port: int, seconds: float, extra: list[str]) -> tuple[float, int]:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "iperf3", "-c", "127.0.0.1", "-p", str(port),
         "-t", str(seconds), "-J", *extra],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    parsed = json.loads(out.stdout)
    if "error" in parsed:
        raise RuntimeError(f"iperf3: {parsed['error']}")
    report = parsed["end"]["sum_received"]
    return report["bits_per_second"] / 1e9, report["bytes"]


DIRECTIONS = (("upload", []), ("download", ["-R"]))
"""
The two bulk directions, as iperf3 client options.
"""


@contextmanager
def iperfServer() -> Iterator[int]:
    """
    An iperf3 server on the load core for the duration; its port.
    """
    port = freePort()
    server = subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, "iperf3", "-s", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        waitForListener(port)
        yield port
    finally:
        server.terminate()
        server.wait()


def socketproxyd(name: str, dataPath: str, *options: str, fdname: str | None = None) -> Route:
    """
    socketproxyd with C{--data-path=dataPath} and C{options}.
    """
    command = [sys.executable, "-m", "socketproxyd", "-c", "20000", f"--data-path={dataPath}"]
    return Route(name, [*command, *options], fdname=fdname)


def proxyRoutes(dataPath: str, floor: bool) -> list[Route]:
    """
    The proxies compared: the original (when installed), the floor (when
    asked for) and socketproxyd with C{--data-path=dataPath}.
    """
    routes = []
    if os.access(ORIGINAL, os.X_OK):
        routes.append(Route("original", [ORIGINAL, "-c", "20000"]))
    if floor:
        routes.append(Route("floor", [sys.executable, str(FLOOR)], unixTarget=False))
    routes.append(socketproxyd("socketproxyd", dataPath))
    return routes


def bulk(paths: list[Route], results: Results, seconds: float) -> None:
    """
    One TCP stream each way with iperf3; throughput and proxy CPU per GiB.
    """
    with iperfServer() as serverPort:
        for path in paths:
            port = path.start(serverPort)
            try:
                for label, extra in DIRECTIONS:
                    (gbps, moved), user, system = measureCpu(path, _iperf, port, seconds, extra)
                    cpu = user + system
                    results.add(f"bulk {label}", "Gbit/s", path.name, gbps)
                    if path.pid:
                        results.add(f"bulk {label} CPU", "s/GiB", path.name, cpu / (moved / GiB))
            finally:
                path.stop()


def _wrk(port: int, seconds: float, connections: int, close: bool) -> tuple[float, float]:
    command = ["taskset", "-c", LOAD_CORE, "wrk", "-t", "1", "-c", str(connections),
               "-d", f"{int(seconds)}s", "--latency", "--timeout", "5s"]  # fmt: skip
    if close:
        command += ["-H", "Connection: close"]
    out = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/index.html"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    match = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]
    return rate, float(match.group(1)) * scale


def http(paths: list[Route], results: Results, nginx: Nginx, seconds: float) -> None:
    """
    HTTP keep-alive through 64 connections, and new connections per second
    (Connection: close), with wrk against nginx on TCP; then new connections
    again through each proxy that can reach it against nginx's UNIX socket.
    """
    for path in paths:
        port = path.start(nginx.port)
        try:
            rate, p99 = _wrk(port, seconds, 64, False)
            results.add("keep-alive requests", "req/s", path.name, rate)
            results.add("keep-alive p99 latency", "ms", path.name, p99)
            rate, p99 = _wrk(port, seconds, 32, True)
            results.add("new connections", "conn/s", path.name, rate)
        finally:
            path.stop()
    for path in paths:
        if not path.unixTarget:
            continue
        port = path.start(nginx.unixPath)
        try:
            rate, p99 = _wrk(port, seconds, 32, True)
            results.add("new connections, UNIX target", "conn/s", path.name, rate)
        finally:
            path.stop()


def idle(paths: list[Route], results: Results, nginx: Nginx, count: int) -> None:
    """
    Hold C{count} idle keep-alive connections, each having completed one
    request; the proxy's own memory and fds per connection.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
    for path in paths:
        port = path.start(nginx.port)
        held = []
        try:
            beforeRss = rss(path.pid) if path.pid else 0
            beforeFds = fdCount(path.pid) if path.pid else 0
            served = 0
            for _ in range(count):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    sock.sendall(request)
                    if sock.recv(4096).startswith(b"HTTP/1.1 200"):
                        served += 1
                    held.append(sock)
                except OSError:
                    break
            time.sleep(2.5)
            results.add(f"idle connections served (of {count})", "conns", path.name, served)
            if path.pid and served:
                results.add(
                    "idle own memory",
                    "KiB/conn",
                    path.name,
                    (rss(path.pid) - beforeRss) / 1024 / served,
                )
                results.add(
                    "idle fds", "fds/conn", path.name, (fdCount(path.pid) - beforeFds) / served
                )
        finally:
            for sock in held:
                sock.close()
            path.stop()


def slowConsumer(paths: list[Route], results: Results, nginx: Nginx, seconds: float) -> None:
    """
    nginx sends a large file as fast as it can to a client reading 20 MiB/s;
    the proxy's RSS growth.
    """
    rate = 20 * MiB
    for path in paths:
        port = path.start(nginx.port)
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)
            baseline = peak = rss(path.pid) if path.pid else 0
            start = time.monotonic()
            received = 0
            while (elapsed := time.monotonic() - start) < seconds:
                if received > rate * elapsed:
                    time.sleep(0.005)
                    continue
                received += len(sock.recv(65536))
                if path.pid:
                    peak = max(peak, rss(path.pid))
            sock.close()
            if path.pid:
                results.add("slow consumer RSS growth", "MiB", path.name, (peak - baseline) / MiB)
            results.add("slow consumer read rate", "MiB/s", path.name, received / seconds / MiB)
        finally:
            path.stop()


SCENARIOS = ("bulk", "http", "idle", "slow", "activation")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short run each (< 3 minutes)")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3, quick 1)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run")
    parser.add_argument("--data-path", default="auto", help="socketproxyd --data-path")
    parser.add_argument("--json", help="also write the medians to this file")
    parser.add_argument(
        "--floor", action="store_true", help="also run benchmarks/floor.py (bulk and http)"
    )
    parser.add_argument(
        "--pipe-sizes",
        default="",
        help="also run bulk through socketproxyd with each --pipe-size (e.g. 64K,256K,1M)",
    )
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    seconds = 2.0 if args.quick else 5.0
    idleCount = 2000 if args.quick else 10000
    only = set(args.only.split(","))
    ensureTools()

    throughputPaths = [
        Route("direct", None, unixTarget=False),
        *proxyRoutes(args.data_path, args.floor),
    ]
    paths = [path for path in throughputPaths if path.name != "floor"]
    pipePaths = [
        socketproxyd(f"pipe {size}", args.data_path, f"--pipe-size={size}")
        for size in filter(None, args.pipe_sizes.split(","))
    ]
    results = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        nginx = Nginx(Path(tmp)) if only & {"http", "idle", "slow"} else None
        try:
            for run in range(runs):
                print(f"run {run + 1}/{runs} ...", file=sys.stderr)
                if "bulk" in only:
                    bulk(throughputPaths + pipePaths, results, seconds)
                if "http" in only:
                    http(throughputPaths, results, nginx, seconds)
                if "idle" in only and run == 0:
                    idle(paths, results, nginx, idleCount)
                if "slow" in only and run == 0:
                    slowConsumer(paths, results, nginx, seconds)
                if "activation" in only and run == 0:
                    original = ORIGINAL if os.access(ORIGINAL, os.X_OK) else None
                    activation(original, REPO, results.add)
        finally:
            if nginx is not None:
                nginx.stop()
    names = [p.name for p in throughputPaths + pipePaths]
    if "activation" in only:
        names += [n for n in ACTIVATION_NAMES if n not in names]
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, medians of {runs} run(s), proxies pinned to "
        f"core {PROXY_CORE}, load on core {LOAD_CORE}, {time.monotonic() - started:.0f} s\n"
    )
    print(results.table(names))
    if args.json:
        Path(args.json).write_text(json.dumps(results.asJson(), indent=2))


if __name__ == "__main__":
    main()
