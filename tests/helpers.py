"""
Test helpers: threaded backends, blocking clients, and a socket-activation
launcher that runs the real command as systemd would.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ORIGINAL = "/lib/systemd/systemd-socket-proxyd"
TIMEOUT = 30.0


def commands() -> dict[str, list[str]]:
    """
    The four ways of running the proxy (DESIGN.md, Commands), each as an argv
    prefix to which options and TARGET are appended.
    """
    script = BIN / "socketproxyd"
    twistd = BIN / "twistd"
    return {
        "socketproxyd": [str(script)] if script.exists() else [],
        "python -m": [sys.executable, "-m", "socketproxyd"],
        "twistd": (
            [str(twistd), "--nodaemon", "--pidfile=", "socketproxy"]
            if twistd.exists()
            else [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--nodaemon",
                "--pidfile=",
                "socketproxy",
            ]
        ),
        "twist": [sys.executable, "-m", "twisted", "--log-format=text", "socketproxy"],
    }


def originalCommand() -> list[str] | None:
    """
    The C original, where it is installed.
    """
    return [ORIGINAL] if os.access(ORIGINAL, os.X_OK) else None


def unixPath(testcase: object, name: str) -> str:
    """
    A short UNIX socket path (sun_path is 108 bytes; trial temp dirs are deep).
    """
    directory = Path("/tmp") / f"spx-{os.getpid()}-{id(testcase):x}"
    directory.mkdir(exist_ok=True)
    testcase.addCleanup(shutil.rmtree, directory, True)
    return str(directory / name)


def listeningSocket(testcase: object, kind: str, backlog: int = 128) -> tuple[socket.socket, str]:
    """
    A bound, listening socket of C{kind} (C{ipv4}, C{ipv6}, C{unix},
    C{abstract}) and the address string a client or TARGET uses for it.
    """
    if kind == "ipv4":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        text = f"127.0.0.1:{sock.getsockname()[1]}"
    elif kind == "ipv6":
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::1", 0))
        text = f"[::1]:{sock.getsockname()[1]}"
    elif kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        text = unixPath(testcase, f"s{random.randrange(10**9)}.sock")
        sock.bind(text)
    elif kind == "abstract":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        name = f"spx-test-{os.getpid()}-{random.randrange(10**9)}"
        sock.bind("\0" + name)
        text = "@" + name
    else:
        raise ValueError(kind)
    sock.listen(backlog)
    testcase.addCleanup(sock.close)
    return sock, text


def connect(address: str, timeout: float = TIMEOUT) -> socket.socket:
    """
    A blocking client socket connected to an address string of
    L{listeningSocket}.
    """
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address
    elif address.startswith("@"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = "\0" + address[1:]
    elif address.startswith("["):
        host, _, port = address[1:].partition("]:")
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        target = (host, int(port))
    else:
        host, _, port = address.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    sock.settimeout(timeout)
    sock.connect(target)
    return sock


def recvAll(sock: socket.socket, limit: int | None = None) -> bytes:
    """
    Read until EOF (or C{limit} bytes).
    """
    chunks = []
    total = 0
    while limit is None or total < limit:
        data = sock.recv(65536 if limit is None else min(65536, limit - total))
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def pattern(seed: int, size: int, chunk: int = 1 << 20) -> Callable[[], bytes]:
    """
    A generator of C{size} reproducible pseudo-random bytes, in chunks.
    """
    rng = random.Random(seed)
    state = {"left": size}

    def nextChunk() -> bytes:
        n = min(chunk, state["left"])
        state["left"] -= n
        return rng.randbytes(n) if n else b""

    return nextChunk


def sendPattern(sock: socket.socket, seed: int, size: int, shutdown: bool = True) -> str:
    """
    Send C{size} reproducible random bytes, then (by default) shut down
    writing; return their sha256.
    """
    digest = hashlib.sha256()
    source = pattern(seed, size)
    while data := source():
        digest.update(data)
        sock.sendall(data)
    if shutdown:
        sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def hashUntilEof(sock: socket.socket, limit: int | None = None) -> tuple[str, int]:
    """
    Read to EOF (or C{limit} bytes); return the sha256 and the count of what
    was read.
    """
    digest = hashlib.sha256()
    total = 0
    while limit is None or total < limit:
        data = sock.recv(1 << 18 if limit is None else min(1 << 18, limit - total))
        if not data:
            break
        digest.update(data)
        total += len(data)
    return digest.hexdigest(), total


class Backend:
    """
    A threaded server standing in for the proxy's target: C{handler(conn)}
    runs in a thread per connection; results go to C{self.results}.
    """

    def __init__(
        self, testcase: object, handler: Callable[[socket.socket], object], kind: str = "ipv4"
    ) -> None:
        self.sock, self.address = listeningSocket(testcase, kind)
        self.handler = handler
        self.accepted = 0
        self.results: list[object] = []
        self._event = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._acceptor = threading.Thread(target=self._acceptLoop, daemon=True)
        self._acceptor.start()
        testcase.addCleanup(self.stop)

    def _acceptLoop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._event:
                self.accepted += 1
                self._event.notify_all()
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        try:
            result = self.handler(conn)
        except OSError as e:
            result = e
        finally:
            conn.close()
        with self._event:
            self.results.append(result)
            self._event.notify_all()

    def waitFor(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """
        Wait until C{predicate()} holds, checked whenever a connection is
        accepted or finished.
        """
        with self._event:
            return self._event.wait_for(predicate, timeout)

    def stop(self) -> None:
        """
        Stop accepting and close the listening socket.
        """
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._acceptor.join(5)


def echo(conn: socket.socket) -> int:
    """
    Echo every byte until EOF, then shut down writing.
    """
    total = 0
    while data := conn.recv(65536):
        conn.sendall(data)
        total += len(data)
    conn.shutdown(socket.SHUT_WR)
    return total


def replyAfterEof(conn: socket.socket) -> bytes:
    """
    Read the whole request to EOF, then answer C{REPLY:<request>}.
    """
    request = recvAll(conn)
    conn.sendall(b"REPLY:" + request)
    return request


def greetThenRead(conn: socket.socket) -> bytes:
    """
    Send a greeting, shut down writing, and read what the client sends after.
    """
    conn.sendall(b"hello from backend")
    conn.shutdown(socket.SHUT_WR)
    return recvAll(conn)


class ProxyProcess:
    """
    The proxy started as systemd starts it: listening sockets on fds 3..,
    C{LISTEN_FDS}, C{LISTEN_PID} equal to the proxy's pid (the launcher
    execs the command in its own process), optionally C{LISTEN_FDNAMES}.
    """

    def __init__(
        self,
        testcase: object,
        command: Sequence[str],
        listeners: Sequence[socket.socket | int] = (),
        fdnames: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        listenPid: str | None = None,
        listenFds: str | None = None,
        preexec: Callable[[], None] | None = None,
        stderr: int | None = None,
        stdout: int | None = None,
    ) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        environ["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])
        )
        environ.update(env or {})
        fds = [s if isinstance(s, int) else s.fileno() for s in listeners]
        if fds or listenFds is not None:
            environ["LISTEN_FDS"] = str(len(fds)) if listenFds is None else listenFds
        if fdnames is not None:
            environ["LISTEN_FDNAMES"] = ":".join(fdnames)
        pidSetting = "LISTEN_PID=$$" if listenPid is None else f"LISTEN_PID={listenPid}"
        script = f'{pidSetting}; export LISTEN_PID; exec "$@"' if fds or listenPid else 'exec "$@"'

        def placeFds() -> None:
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)
            if preexec is not None:
                preexec()

        self.command = list(command)
        self.cwd = testcase.mktemp()
        os.makedirs(self.cwd)
        self.popen = subprocess.Popen(
            ["/bin/sh", "-c", script, "launcher", *command],
            env=environ,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE if stderr is None else stderr,
            preexec_fn=placeFds,
            close_fds=False,
        )
        self.pid = self.popen.pid
        self._output: tuple[str, str] | None = None
        testcase.addCleanup(self.kill)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """
        Wait for the process to exit; its exit status.
        """
        stdout, stderr = self.popen.communicate(timeout=timeout)
        self._output = (
            (stdout or b"").decode(errors="replace"),
            (stderr or b"").decode(errors="replace"),
        )
        return self.popen.returncode

    @property
    def stdout(self) -> str:
        assert self._output is not None
        return self._output[0]

    @property
    def stderr(self) -> str:
        assert self._output is not None
        return self._output[1]

    def running(self) -> bool:
        """
        Whether the process is still running.
        """
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        """
        Send C{sig} and wait for the exit status.
        """
        if self.running():
            self.popen.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        """
        Make sure the process is gone and its pipes are closed.
        """
        if self.popen.poll() is None:
            self.popen.kill()
        if self._output is None:
            try:
                self.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def rss(self) -> int:
        """
        The process's resident set size in bytes.
        """
        return statusField(self.pid, "VmRSS") * 1024

    def fdCount(self) -> int:
        """
        How many fds the process has open.
        """
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def statusField(pid: int, field: str) -> int:
    """
    A numeric field (in kB for sizes) of C{/proc/PID/status}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time of a process so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waitUntil(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """
    Poll C{predicate} for things no event announces (a process's memory,
    another process's exit); bounded by C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
