"""
The activation scenario of benchmarks/run.py: how long the first client of
a socket-activated proxy waits for the process to start, and the proxy's
memory once it has served that client.

The launcher is C{systemd-socket-activate -l} where it is installed (it
listens, and execs the proxy on the first connection, as systemd does),
else a shell that binds the socket and execs the proxy at once. The time
is from the client's C{connect()} (with C{systemd-socket-activate}) or the
start of the process to the first byte of the backend's answer to the
client's C{ping}, on a TCP target and on a UNIX-socket one. The original,
the console script, C{python -m socketproxyd}, the console script with
C{--proxy-protocol=v2}, twistd and twist; and for scale C{python3 -c pass}
and C{python3 -c "from twisted.internet import reactor"} (the process start
and the reactor import alone), all in the same run.

    python benchmarks/activation.py [--count N]    # or: benchmarks/run.py --only activation
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
COUNT = 10
LAUNCHER = shutil.which("systemd-socket-activate")
ORIGINAL = "/lib/systemd/systemd-socket-proxyd"


def _answerer(sock: socket.socket) -> None:
    """
    Serve on C{sock}: read up to the client's C{ping} (after a PROXY
    header, if one comes), answer C{hello} and close.
    """

    def serve(conn: socket.socket) -> None:
        with conn:
            received = b""
            while not received.endswith(b"ping"):
                data = conn.recv(4096)
                if not data:
                    return
                received += data
            conn.sendall(b"hello")

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ask(address: tuple[str, int], command: list[str]) -> None:
    with socket.create_connection(address, timeout=30) as client:
        client.sendall(b"ping")
        if client.recv(5) != b"hello":
            raise RuntimeError(f"{command[0]}: no answer through the proxy")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def _viaSocketActivate(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    port = _freePort()
    process = subprocess.Popen(
        [str(LAUNCHER), "-l", f"127.0.0.1:{port}", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        if "Listening on" not in line:
            raise RuntimeError(f"systemd-socket-activate: {line.strip()}")
        started = time.perf_counter()
        _ask(("127.0.0.1", port), command)
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, _rss(process.pid)
    finally:
        process.terminate()
        process.communicate(timeout=10)


def _viaShell(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    fd = listener.fileno()
    started = time.perf_counter()
    process = subprocess.Popen(
        ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "launcher", *command],
        env=dict(env, LISTEN_FDS="1"),
        close_fds=False,
        preexec_fn=lambda: os.dup2(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100), 3),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _ask(listener.getsockname(), command)
        listener.close()
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, _rss(process.pid)
    finally:
        process.terminate()
        process.wait(10)


def firstByte(command: list[str], repo: Path) -> tuple[float, int]:
    """
    The milliseconds to the first answer byte through a freshly activated
    C{command}, and its RSS then.
    """
    env = dict(os.environ, PYTHONPATH=str(repo))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return (_viaSocketActivate if LAUNCHER else _viaShell)(command, env)


def _interpreter(code: str) -> float:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return (time.perf_counter() - started) * 1000


def forms(original: str | None, target: str) -> dict[str, list[str]]:
    """
    Each way of starting a proxy on C{target}, by name.
    """
    script = str(BIN / "socketproxyd")
    commands = {
        "console script": [script, target],
        "python -m": [sys.executable, "-m", "socketproxyd", target],
        "PROXY header": [script, "--proxy-protocol=v2", target],
        "twistd": [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "socketproxy", target],
        "twist": [sys.executable, "-m", "twisted", "socketproxy", target],
    }
    if original:
        commands = {"original": [original, target], **commands}
    return commands


NAMES = [
    "original", "console script", "python -m", "PROXY header", "twistd", "twist",
    "python -c pass", "reactor import",
]  # fmt: skip


def activation(
    original: str | None, repo: Path, add: Callable[..., None], count: int = COUNT
) -> None:
    """
    Median time to the first byte, on a TCP and a UNIX target, and RSS,
    for each way of starting a proxy; C{add(metric, unit, path, value)}
    records them.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tcp = socket.create_server(("127.0.0.1", 0), backlog=128)
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(f"{tmp}/backend.sock")
        unix.listen(128)
        targets = {"TCP": f"127.0.0.1:{tcp.getsockname()[1]}", "UNIX": f"{tmp}/backend.sock"}
        for sock in (tcp, unix):
            _answerer(sock)
        try:
            for kind, target in targets.items():
                for name, command in forms(original, target).items():
                    samples = [firstByte(command, repo) for _ in range(count)]
                    median = statistics.median(s[0] for s in samples)
                    add(f"first byte, {kind} target", "ms", name, median)
                    if kind == "TCP":
                        rss = statistics.median(s[1] for s in samples) / 2**20
                        add("RSS after the first client", "MiB", name, rss)
            scale = {
                "python -c pass": "pass",
                "reactor import": "from twisted.internet import reactor",
            }
            for name, code in scale.items():
                median = statistics.median(_interpreter(code) for _ in range(count))
                add("first byte, TCP target", "ms", name, median)
        finally:
            tcp.close()
            unix.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args()
    results: dict[tuple[str, str], dict[str, float]] = {}

    def add(metric: str, unit: str, path: str, value: float) -> None:
        results.setdefault((metric, unit), {})[path] = value

    original = ORIGINAL if os.access(ORIGINAL, os.X_OK) else None
    activation(original, Path(__file__).resolve().parent.parent, add, args.count)
    launcher = "systemd-socket-activate -l" if LAUNCHER else "a shell launcher"
    print(f"{launcher}, median of {args.count}")
    names = [n for n in NAMES if any(n in row for row in results.values())]
    print("\t".join(["metric", "unit", *names]))
    for (metric, unit), row in results.items():
        cells = [f"{row[n]:.3g}" if n in row else "-" for n in names]
        print("\t".join([metric, unit, *cells]))


if __name__ == "__main__":
    main()
