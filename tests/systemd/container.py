"""
A throw-away systemd 252 container for end-to-end tests: the host's own root
seen through an overlay whose writes land in a tmpfs, booted by
C{systemd-nspawn} in a private mount namespace, with only C{lo} for network.

Nothing is mounted in the host's namespace; the launcher runs in cgroups of
its own, removed afterwards with the C{/run/systemd/nspawn*} entries and the
temporary directory it created.  Every wait is bounded.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

NSPAWN = "systemd-nspawn"
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
RUN_SYSTEMD = Path("/run/systemd")
TARGET = "spx-test.target"
BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
COMMAND_TIMEOUT = 20.0
CONTAINER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}
PR_SET_PDEATHSIG = 1

_installAttempted = False
T = TypeVar("T")


class ContainerUnavailable(Exception):
    """
    The container cannot be had here (not root, no nspawn, no boot); the
    message says why, for a test to skip with.
    """


def waitFor(
    condition: Callable[[], T | None], timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """
    Poll C{condition} until it returns something true, and return that; raise
    C{TimeoutError} after C{timeout} seconds, so no wait is unbounded.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


SWITCH = "SOCKETPROXYD_SYSTEMD_TESTS"
"""
The environment variable that, set to 1, lets the suite boot systemd
containers (as root, installing C{systemd-container} if need be): a
newcomer's C{pytest tests} does neither without asking; C{.ci/run} asks.
"""


def ensureNspawn() -> str:
    """
    The path of C{systemd-nspawn}, installing C{systemd-container} once with
    apt-get when it is missing; raise L{ContainerUnavailable} when it cannot
    be had, or when L{SWITCH} does not ask for containers.
    """
    global _installAttempted
    if os.environ.get(SWITCH) != "1":
        raise ContainerUnavailable(
            f"the real-systemd suite boots containers as root: set {SWITCH}=1 to run it"
        )
    if os.geteuid() != 0:
        raise ContainerUnavailable("booting a systemd container needs root")
    found = shutil.which(NSPAWN)
    if found:
        return found
    if not _installAttempted and shutil.which("apt-get"):
        _installAttempted = True
        try:
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd-container"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
        found = shutil.which(NSPAWN)
        if found:
            return found
    raise ContainerUnavailable("systemd-nspawn is not installed and could not be installed")


def _nspawnLeftovers() -> set[Path]:
    """
    Every path under C{/run/systemd/nspawn*}, to tell afterwards which ones
    this container created.
    """
    paths: set[Path] = set()
    for top in RUN_SYSTEMD.glob("nspawn*"):
        paths.add(top)
        if top.is_dir() and not top.is_symlink():
            paths.update(top.rglob("*"))
    return paths


def _dieWithParent() -> None:
    """
    In the launcher (before exec): SIGTERM it, which powers the container
    off, if the test process dies without tearing it down.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Container:
    """
    One booted systemd container.  L{boot} it with files to write into its
    tree first (units, scripts), L{run} commands inside it, and L{stop} it,
    which powers it off and removes whatever the boot left on the host.
    """

    def __init__(self, files: Mapping[str, str], binds: Sequence[str] = ()) -> None:
        self.files = dict(files)
        self.binds = list(binds)
        self.name = "spx-test-" + uuid.uuid4().hex[:12]
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self.cgroups: list[Path] = []
        self._runBefore: set[Path] = set()
        self._stopped = False

    def console(self) -> str:
        """
        The tail of nspawn's console output, to say why a boot failed.
        """
        if self.workdir is None:
            return ""
        try:
            return (self.workdir / "console.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        """
        Build the overlay and boot systemd into C{spx-test.target}; return
        once C{systemctl is-system-running} says running (or degraded).
        On any failure everything is cleaned up and L{ContainerUnavailable}
        is raised.
        """
        nspawn = ensureNspawn()
        atexit.register(self.stop)
        try:
            self._boot(nspawn, timeout)
        except BaseException as e:
            console = self.console()
            self.stop()
            if isinstance(e, ContainerUnavailable | TimeoutError | OSError):
                raise ContainerUnavailable(f"container did not boot: {e}\n{console}") from e
            raise

    def _stage(self, stage: Path) -> None:
        files = {
            "etc/machine-id": uuid.uuid4().hex + "\n",
            f"etc/systemd/system/{TARGET}": (
                "[Unit]\nDescription=socketproxyd end-to-end tests\n"
                "Requires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n"
            ),
            **self.files,
        }
        for relative, content in files.items():
            path = stage / relative.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)

    def _makeCgroups(self) -> None:
        for hierarchy in CGROUP_HIERARCHIES:
            if os.path.exists(os.path.join(hierarchy, "cgroup.procs")):
                path = Path(hierarchy) / self.name
                path.mkdir()
                self.cgroups.append(path)

    def _boot(self, nspawn: str, timeout: float) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="spx-nspawn-"))
        mnt, stage = self.workdir / "mnt", self.workdir / "stage"
        mnt.mkdir()
        self._stage(stage)
        self._runBefore = _nspawnLeftovers()
        self._makeCgroups()
        tree = mnt / "tree"
        args = [
            nspawn,
            f"--directory={tree}",
            f"--machine={self.name}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--link-journal=no",
            "--console=read-only",
            "--quiet",
            *(f"--bind-ro={path}" for path in self.binds),
            "--boot",
            "--",
            f"systemd.unit={TARGET}",
        ]
        script = "\n".join(
            [
                "set -e",
                *(f'echo $$ > "{cgroup}/cgroup.procs"' for cgroup in self.cgroups),
                f'mount -t tmpfs -o mode=0755 spx-test "{mnt}"',
                f'mkdir "{mnt}/upper" "{mnt}/work" "{tree}"',
                f'mount -t overlay spx-test -o lowerdir=/,upperdir="{mnt}/upper",'
                f'workdir="{mnt}/work" "{tree}"',
                f'cp -a "{stage}/." "{tree}/"',
                'exec "$@"',
            ]
        )
        with open(self.workdir / "console.log", "wb") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_dieWithParent,
            )
        self.pid1 = waitFor(self._findPid1, timeout, what="the container's PID 1")

        def running() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise ContainerUnavailable("systemd-nspawn exited")
            try:
                state = self.run(["systemctl", "is-system-running"], timeout=5).stdout.strip()
            except subprocess.TimeoutExpired:
                return False
            return state in ("running", "degraded")

        waitFor(running, timeout, interval=0.1, what="systemctl is-system-running")

    def _findPid1(self) -> int | None:
        """
        The host PID of the container's systemd: a descendant of nspawn that
        is PID 1 in its own PID namespace.
        """
        if self.process is None or self.process.poll() is not None:
            raise ContainerUnavailable("systemd-nspawn exited")
        todo = [self.process.pid]
        while todo:
            pid = todo.pop()
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(child) for child in f.read().split())
                with open(f"/proc/{pid}/status") as f:
                    status = dict(
                        line.split(":", 1) for line in f.read().splitlines() if ":" in line
                    )
            except (OSError, ValueError):
                continue
            nspids = status.get("NSpid", "").split()
            if pid != self.process.pid and len(nspids) > 1 and nspids[-1] == "1":
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "systemd":
                        return pid
        return None

    def command(self, argv: Sequence[str]) -> list[str]:
        """
        The host argv that runs C{argv} inside the container, in all its
        namespaces.
        """
        if self.pid1 is None:
            raise ContainerUnavailable("the container is not running")
        return ["nsenter", f"--target={self.pid1}", "--all", "--", *argv]

    def run(
        self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{argv} inside the container and return its result (text), with
        a clean environment and a bounded time.
        """
        return subprocess.run(
            self.command(argv),
            input=input.decode() if input is not None else None,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=CONTAINER_ENV,
            timeout=timeout,
            check=False,
        )

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """
        Start C{argv} inside the container without waiting for it, its
        stdout and stderr piped (text); the caller bounds and reaps it.
        """
        return subprocess.Popen(
            self.command(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=CONTAINER_ENV,
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """
        The given properties of C{unit}, from C{systemctl show}.
        """
        argv = ["systemctl", "show", unit, *(f"--property={p}" for p in properties)]
        out = self.run(argv).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        """
        Power the container off (SIGTERM to nspawn, SIGKILL to its PID 1 if
        that does not end it in time) and remove the cgroups, the
        C{/run/systemd/nspawn*} entries and the temporary directory it
        created.  Safe to call more than once.
        """
        if self._stopped:
            return
        self._stopped = True
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                for pid in (self.pid1, process.pid):
                    if pid is not None:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    print(f"systemd-nspawn {process.pid} would not die", file=sys.stderr)
        self.pid1 = None
        for cgroup in self.cgroups:
            try:
                waitFor(lambda c=cgroup: _removeCgroup(c), 10, what=f"removing {cgroup}")
            except TimeoutError as e:
                print(e, file=sys.stderr)
        for path in sorted(_nspawnLeftovers() - self._runBefore, key=lambda p: -len(p.parts)):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
            except OSError:
                pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _removeCgroup(cgroup: Path) -> bool:
    """
    Remove C{cgroup} and the cgroups nspawn made under it, deepest first;
    whether it is gone.
    """
    if not cgroup.exists():
        return True
    children = sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for path in [*children, cgroup]:
        try:
            path.rmdir()
        except OSError:
            return False
    return True
