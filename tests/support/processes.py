"""
The command under test and its processes: the ways of running the proxy
(and the C original, where installed), a socket-activation launcher that
runs the real command as systemd would, what C{/proc} says of a process,
and the mixins, test case and C{NOTIFY_SOCKET} listener the integration
tests start it through.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support.sockets import TIMEOUT, listeningSocket, unixPath

REPO = Path(__file__).resolve().parent.parent.parent
MANUAL = REPO / "man" / "socketproxyd.8"
README = REPO / "README.rst"
BIN = Path(sys.executable).parent
ORIGINAL = "/lib/systemd/systemd-socket-proxyd"


def commands() -> dict[str, list[str]]:
    """
    The four ways of running the proxy (README.rst, Commands), each as an argv
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


class ProxyTestMixin:
    """
    Starts the command under test in front of a backend.
    """

    command: list[str] | None = None
    isOriginal = False
    options: tuple[str, ...] = ()

    def setUp(self) -> None:
        if not self.command:
            raise SkipTest("command not installed")

    def startProxy(
        self,
        target: str | None,
        *args: str,
        listeners: tuple[str, ...] = ("ipv4",),
        fdnames: list[str] | None = None,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> tuple[ProxyProcess, list[str]]:
        """
        Start the proxy (behind C{prefix}, a command that execs it) with
        listening sockets of the given kinds, and C{target} unless it is
        C{None}; the addresses clients connect to.
        """
        sockets, addresses = [], []
        for kind in listeners:
            sock, address = listeningSocket(self, kind)
            sockets.append(sock)
            addresses.append(address)
        command = [*prefix, *self.command, *self.options, *args, *([target] if target else [])]
        process = ProxyProcess(self, command, sockets, fdnames=fdnames, env=env)
        for sock in sockets:
            sock.close()
        return process, addresses


class NotifyListener:
    """
    A NOTIFY_SOCKET the test reads, as systemd would.
    """

    def __init__(self, testcase: SynchronousTestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.sock.close)
        if abstract:
            name = f"spx-notify-{os.getpid()}-{random.randrange(10**9)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = unixPath(testcase, "notify")
            self.sock.bind(self.address)
        self.messages: list[tuple[float, str]] = []

    def _arrivals(self, seconds: float) -> Iterator[tuple[float, str]]:
        """
        Messages as they arrive (and are recorded) for up to C{seconds}.
        """
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            arrival = (time.monotonic(), data.decode())
            self.messages.append(arrival)
            yield arrival

    def waitFor(self, field: str, timeout: float = 30.0) -> float:
        """
        Wait for a message containing C{field}; when it arrived.
        """
        for at, message in chain(list(self.messages), self._arrivals(timeout)):
            if field in message.split("\n"):
                return at
        raise AssertionError(f"no {field} in {self.messages}")

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """
        Everything that arrives in the next C{seconds}.
        """
        return list(self._arrivals(seconds))


class ConsoleScriptTestCase(ProxyTestMixin, SynchronousTestCase):
    """
    Runs the console script, C{socketproxyd}, with one IPv4 listener.
    """

    command = commands()["socketproxyd"]

    def start(
        self, target: str, *args: str, env: dict[str, str] | None = None, prefix=()
    ) -> tuple[ProxyProcess, str]:
        process, [address] = self.startProxy(target, *args, env=env, prefix=tuple(prefix))
        return process, address

    def startWithFewDescriptors(
        self, target: str, *args: str, descriptors: int = 64
    ) -> tuple[ProxyProcess, str, int]:
        """
        The proxy under C{prlimit --nofile=N:N} with C{-c 1000}, once it is
        ready; its address, and how many connections it says it serves at
        most (its READY=1 status), which the descriptors bound. Skips
        without prlimit.
        """
        if not shutil.which("prlimit"):
            raise SkipTest("prlimit (util-linux) is not installed")
        notify = NotifyListener(self)
        process, address = self.start(
            target,
            "-c",
            "1000",
            *args,
            prefix=["prlimit", f"--nofile={descriptors}:{descriptors}"],
            env={"NOTIFY_SOCKET": notify.address},
        )
        notify.waitFor("READY=1")
        status = [m for _, m in notify.messages if "READY=1" in m][0]
        return process, address, int(status.rsplit("at most ", 1)[1].rstrip(")"))
