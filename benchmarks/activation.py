"""
The activation scenario of benchmarks/run.py: how long the first client of
a socket-activated proxy waits for the process to start, and the proxy's
memory once it has served that client.

The launcher binds a listening socket, starts the proxy on it as systemd
does (fd 3, C{LISTEN_*}) and connects at once; the time is from the start
of the process to the first byte of the backend's greeting through it. The
original, the console script, twistd and twist, and for scale
C{python3 -c pass} and C{python3 -c "from twisted.internet import reactor"}
(the process start and the reactor import alone), all in the same run.
"""

from __future__ import annotations

import fcntl
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
COUNT = 10


def _greeter() -> tuple[socket.socket, str]:
    """
    A backend that greets every client and closes; its address.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    threading.Thread(target=serve, daemon=True).start()
    host, port = server.getsockname()
    return server, f"{host}:{port}"


def _firstByte(command: list[str], repo: Path) -> tuple[float, int]:
    """
    Start C{command} on a fresh listening socket, connect at once; the
    milliseconds to the first reply byte, and the proxy's RSS then.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    fd = listener.fileno()
    env = dict(os.environ, LISTEN_FDS="1", PYTHONPATH=str(repo))
    started = time.monotonic()
    process = subprocess.Popen(
        ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "launcher", *command],
        env=env,
        close_fds=False,
        preexec_fn=lambda: os.dup2(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100), 3),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with socket.create_connection(listener.getsockname(), timeout=30) as client:
            listener.close()
            if client.recv(5) != b"hello":
                raise RuntimeError(f"{command[0]}: no greeting through the proxy")
            elapsed = (time.monotonic() - started) * 1000
        with open(f"/proc/{process.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return elapsed, rss * 1024
    finally:
        process.terminate()
        process.wait(10)


def _interpreter(code: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.monotonic() - started) * 1000


def activation(original: str | None, repo: Path, add: Callable[..., None]) -> None:
    """
    Median time to the first byte, and RSS, for each way of starting a
    proxy; C{add(metric, unit, path, value)} records them.
    """
    server, target = _greeter()
    commands = {
        "console script": [str(BIN / "socketproxyd"), target],
        "twistd": [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "socketproxy", target],
        "twist": [sys.executable, "-m", "twisted", "socketproxy", target],
    }
    if original:
        commands = {"original": [original, target], **commands}
    try:
        for name, command in commands.items():
            samples = [_firstByte(command, repo) for _ in range(COUNT)]
            add("activation: first byte", "ms", name, statistics.median(s[0] for s in samples))
            add(
                "activation: RSS at start",
                "MiB",
                name,
                statistics.median(s[1] for s in samples) / 2**20,
            )
        for name, code in (("python -c pass", "pass"),
                           ("reactor import", "from twisted.internet import reactor")):  # fmt: skip
            add(
                "activation: first byte",
                "ms",
                name,
                statistics.median(_interpreter(code) for _ in range(COUNT)),
            )
    finally:
        server.close()
