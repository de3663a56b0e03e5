"""
Everything the tests share, in one place (test modules import only from
here): for the integration tests, threaded backends, blocking clients, a
socket-activation launcher that runs the real command as systemd would and
waits for listening sockets; for the unit tests, fake reactors, the one
tracker double (L{FakeTracker}), and the harnesses that drive a connection
or a splice pump by hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd import logs
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.events import DOWNSTREAM, UPSTREAM, Served
from socketproxyd.service.closelog import CloseLog
from socketproxyd.stream.connection import Connection
from socketproxyd.stream.factory import ProxyFactory
from socketproxyd.stream.splice import pipes
from socketproxyd.stream.splice.pipes import PipeSweeper
from socketproxyd.stream.splice.pump import SplicePump
from socketproxyd.stream.transportpump import ClientProtocol

REPO = Path(__file__).resolve().parent.parent
MANUAL = REPO / "man" / "socketproxyd.8"
README = REPO / "README.rst"
BIN = Path(sys.executable).parent
ORIGINAL = "/lib/systemd/systemd-socket-proxyd"
TIMEOUT = 30.0


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


SO_ACCEPTCON = 0x10000
"""
C{__SO_ACCEPTCON}, the flag of a listening socket in C{/proc/net/unix}.
"""


def unixListening(path: str) -> bool:
    """
    Whether a UNIX stream socket bound to C{path} (C{@name} for an abstract
    one) is listening: its line in C{/proc/net/unix} has the
    C{__SO_ACCEPTCON} flag. A path exists from C{bind(2)}, before
    C{listen(2)}: a client connecting in between is refused.
    """
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.rstrip("\n").split(None, 7)
            if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & SO_ACCEPTCON:
                return True
    return False


def waitListening(path: str, timeout: float = TIMEOUT) -> bool:
    """
    Wait until a UNIX socket at C{path} is listening, as L{unixListening}
    sees it; bounded by C{timeout}.
    """
    return waitUntil(lambda: unixListening(path), timeout)


def ping(address: str, payload: bytes = b"ping") -> bytes:
    """
    Send C{payload} and read as many bytes back (an echo that needs no
    half-close, so it works through the original too).
    """
    with connect(address) as sock:
        sock.sendall(payload)
        return recvAll(sock, len(payload))


def halfClosePing(address: str, payload: bytes) -> bytes:
    """
    Send C{payload}, shut down writing, and return everything that comes back.
    """
    with connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recvAll(sock)


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


class FakeFDReactor(Clock):
    """
    A clock that also records which readers and writers are registered, for
    code that puts its own descriptors in the reactor; the tests make the
    reactor's calls by hand.
    """

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[object] = set()
        self.writers: set[object] = set()

    def addReader(self, reader: object) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: object) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: object) -> None:
        self.writers.discard(writer)


class FakeTracker:
    """
    The one stand-in for the tracker a L{socketproxyd.stream.factory.ProxyFactory},
    a L{socketproxyd.datagram.relay.DatagramRelay} or an acceptor reports to:
    it has C{room} (10 unless told; tests may set C{free}) and records
    every report.

    Each close also goes to a L{CloseLog}, as the service's ledger passes
    it on at debug level, so the close line can be tested with the path.

    @ivar free: what L{room} answers.
    @ivar opens: the connections or sessions reported opened, in order.
    @ivar closes: the connections or sessions reported closed, in order.
    @ivar exhausted: how many times descriptors were reported exhausted.
    @ivar waiting: what to call again once descriptors are free, in order.
    """

    def __init__(self, room: int = 10) -> None:
        self.free = room
        self.opens: list[Served] = []
        self.closes: list[Served] = []
        self.exhausted = 0
        self.waiting: list[Callable[[], None]] = []

    def room(self) -> int:
        return self.free

    def opened(self, served: Served) -> None:
        self.opens.append(served)

    def closed(self, served: Served) -> None:
        self.closes.append(served)
        CloseLog(served.server.reactor).closed(served)

    def fdsExhausted(self) -> None:
        self.exhausted += 1

    def waitForDescriptors(self, again: Callable[[], None]) -> None:
        self.waiting.append(again)


PEER = IPv4Address("TCP", "192.0.2.1", 4000)


HOST = IPv4Address("TCP", "192.0.2.2", 8000)


LINGER_RESET = struct.pack("ii", 1, 0)


class RelayTransport(StringTransport):
    """
    A string transport that records half-close, abort and socket options,
    and, as a real one does, tells its protocol of a write shutdown or a
    close later, once C{deliveries} is run (see L{TransportHarness.settle}).

    @ivar writeCloses: how many times writing was shut down.
    @ivar lingerReset: whether closing the socket would send a reset.
    @ivar lost: whether the protocol heard C{connectionLost}.
    """

    def __init__(
        self, deliveries: list[tuple[RelayTransport, Callable[[], None]]], peer: object
    ) -> None:
        super().__init__(hostAddress=HOST, peerAddress=peer)
        self.deliveries = deliveries
        self.protocol: Protocol | None = None
        self.writeCloses = 0
        self.aborted = False
        self.lingerReset = False
        self.keepalive = False
        self.lost = False

    def connect(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def loseWriteConnection(self) -> None:
        self.writeCloses += 1
        self.deliveries.append((self, lambda: self.protocol.writeConnectionLost()))

    def loseConnection(self) -> None:
        """
        Close as Twisted's transports do: at once if writing is already
        shut down, otherwise once the buffer is out.
        """
        if self.writeCloses and not self.disconnecting:
            self.disconnecting = True
            self.connectionLost(error.ConnectionDone())
            return
        self._close(error.ConnectionDone())

    def stopProducing(self) -> None:
        """
        A transport is a producer whose C{stopProducing} closes it.
        """
        self.loseConnection()

    def abortConnection(self) -> None:
        """
        Abort as Twisted's TCP and UNIX transports do: the socket is
        closed with a zero linger, which sends a reset.
        """
        self.aborted = True
        self.lingerReset = True
        self._close(error.ConnectionAborted())

    def _close(self, reason: Exception) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.deliveries.append((self, lambda: self.connectionLost(reason)))

    def connectionLost(self, reason: Exception) -> None:
        """
        The socket is gone: the protocol hears it, once.
        """
        if not self.lost:
            self.lost = True
            if self.producer is not None:
                producer, self.producer = self.producer, None
                producer.stopProducing()
            self.protocol.connectionLost(Failure(reason))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepalive = enabled

    def getHandle(self) -> RelayTransport:
        return self

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        if (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.lingerReset = value == LINGER_RESET

    def sees(self) -> str:
        """
        What the peer of this socket sees of the proxy's side: C{"open"},
        C{"eof"} or C{"reset"} (an abort with a zero linger).
        """
        if self.aborted and self.lingerReset:
            return "reset"
        if self.writeCloses or self.disconnecting:
            return "eof"
        return "open"


class TransportHarness:
    """
    A connection on the transport pump: the client's L{ServerProtocol} and
    the target's L{ClientProtocol} on L{RelayTransport}s, the target
    connected through the factory's endpoint on a L{MemoryReactorClock}.
    """

    def __init__(
        self, settings: ProxySettings, tracker: FakeTracker, target: str = "127.0.0.1:8080"
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.tracker = tracker
        self.deliveries: list[tuple[RelayTransport, Callable[[], None]]] = []
        self.factory = ProxyFactory(self.reactor, parseTarget(target), settings, tracker)
        self.server = self.factory.buildProtocol(PEER)
        self.serverTransport = RelayTransport(self.deliveries, PEER)
        self.serverTransport.connect(self.server)
        self.connection = self.server.pump.connection
        self.client: ClientProtocol | None = None
        self.clientTransport: RelayTransport | None = None

    def completeConnect(self) -> None:
        """
        The target accepts the connection the factory's endpoint started.
        """
        wrapper = self.reactor.tcpClients[-1][2].buildProtocol(None)
        self.clientTransport = RelayTransport(self.deliveries, None)
        self.clientTransport.connect(wrapper)
        self.client = self.server.pump.client
        self.settle()

    def deliverOne(self) -> None:
        """
        Deliver the oldest of what the transports owe their protocols.
        """
        transport, delivery = self.deliveries.pop(0)
        if not transport.lost:
            delivery()

    def settle(self) -> None:
        """
        Deliver what the transports owe their protocols, until nothing is
        left.
        """
        while self.deliveries:
            self.deliverOne()

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.settle()

    def clientSends(self, data: bytes) -> None:
        self.server.dataReceived(data)
        self.settle()

    def clientEof(self) -> None:
        self.server.readConnectionLost()
        self.settle()

    def clientResets(self) -> None:
        self.serverTransport.connectionLost(error.ConnectionLost())
        self.settle()

    def targetSends(self, data: bytes) -> None:
        self.clientTransport.protocol.dataReceived(data)
        self.settle()

    def targetEof(self) -> None:
        self.clientTransport.protocol.readConnectionLost()
        self.settle()

    def targetResets(self) -> None:
        self.clientTransport.connectionLost(error.ConnectionLost())
        self.settle()

    def clientReceived(self) -> bytes:
        return self.serverTransport.value()

    def targetReceived(self) -> bytes:
        return self.clientTransport.value()

    def clientSees(self) -> str:
        return self.serverTransport.sees()

    def targetSees(self) -> str:
        return self.clientTransport.sees()

    def keepalive(self) -> tuple[bool, bool]:
        return self.serverTransport.keepalive, self.clientTransport.keepalive


class RecordingSocket(socket.socket):
    """
    A socket that remembers whether it was set to close with a reset (on
    a UNIX socket the kernel sends none, so the test asks the socket).
    """

    lingerReset = False

    def setsockopt(self, level: int, option: int, value: object, *rest: object) -> None:
        if (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.lingerReset = value == LINGER_RESET
        super().setsockopt(level, option, value, *rest)


class Outside:
    """
    The far end of one of the proxy's sockets: what it sent and received.
    """

    def __init__(self, sock: socket.socket, inside: RecordingSocket) -> None:
        self.socket = sock
        self.inside = inside
        self.received = b""
        self.eof = False
        self.closed = False

    def read(self) -> bool:
        """
        Read what has arrived; whether anything had.
        """
        if self.eof or self.closed:
            return False
        got = False
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return got
            except ConnectionResetError:
                self.eof = True
                return True
            if not data:
                self.eof = True
                return True
            self.received += data
            got = True

    def sees(self) -> str:
        if self.inside.lingerReset and self.inside.fileno() == -1:
            return "reset"
        self.read()
        return "eof" if self.eof else "open"


class SocketConnector:
    """
    Stands in for the factory's bare connector: the target is already
    connected, on C{sock}.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.attempts = 0

    def attempt(self, fallbackFactory: object) -> socket.socket:
        self.attempts += 1
        return self.socket


class SpliceHarness:
    """
    A connection on the splice pump between two real socket pairs (UNIX
    ones, or TCP ones on the loopback interface), the target's handed over
    by a L{SocketConnector} in the factory; the test is the reactor,
    calling C{doRead} and C{doWrite} until all is quiet.
    """

    def __init__(
        self, settings: ProxySettings, tracker: FakeTracker, test: SynchronousTestCase, tcp: bool
    ) -> None:
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.reactor = FakeFDReactor()
        self.tracker = tracker
        self.client = self._pair(test, tcp)
        self.target = self._pair(test, tcp)
        self.factory = ProxyFactory(self.reactor, parseTarget("127.0.0.1:8080"), settings, tracker)
        self.connector = self.factory.bareConnector = SocketConnector(self.target.inside)
        pump = SplicePump(
            self.reactor, self.factory.sweeper, self.client.inside, settings.keepalive
        )
        self.connection = Connection(self.factory, pump, PEER, HOST)
        self.connection.start()
        self.settle()

    @staticmethod
    def _pair(test: SynchronousTestCase, tcp: bool) -> Outside:
        if tcp:
            listener = socket.create_server(("127.0.0.1", 0))
            test.addCleanup(listener.close)
            outside = socket.create_connection(listener.getsockname())
            plain, _ = listener.accept()
        else:
            outside, plain = socket.socketpair()
        inside = RecordingSocket(plain.family, plain.type, fileno=plain.detach())
        for sock in (outside, inside):
            sock.setblocking(False)
            test.addCleanup(sock.close)
        return Outside(outside, inside)

    def settle(self) -> None:
        """
        Make the reactor's calls for every registered reader and writer
        until they move nothing more.
        """
        for _ in range(1000):
            before = self._state()
            for reader in list(self.reactor.readers):
                if reader in self.reactor.readers:
                    reader.doRead()
            for writer in list(self.reactor.writers):
                if writer in self.reactor.writers:
                    writer.doWrite()
            if self._state() == before:
                return
        raise AssertionError("the splice pump never settles")

    def _state(self) -> tuple[object, ...]:
        connection = self.connection
        return (
            tuple(connection.counts),
            tuple(connection.flows),
            connection.closing,
            tuple((end.pending, len(end.backlog)) for end in connection.pump.ends),
            frozenset(self.reactor.readers),
            frozenset(self.reactor.writers),
        )

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.settle()

    def _send(self, outside: Outside, data: bytes) -> None:
        peer = self.target if outside is self.client else self.client
        while data:
            try:
                data = data[outside.socket.send(data) :]
            except BlockingIOError:
                peer.read()
            self.settle()

    def clientSends(self, data: bytes) -> None:
        self._send(self.client, data)

    def targetSends(self, data: bytes) -> None:
        self._send(self.target, data)

    def _eof(self, outside: Outside) -> None:
        outside.socket.shutdown(socket.SHUT_WR)
        self.settle()

    def clientEof(self) -> None:
        self._eof(self.client)

    def targetEof(self) -> None:
        self._eof(self.target)

    def _reset(self, outside: Outside) -> None:
        """
        Close C{outside} with bytes it did not read: on a UNIX socket, that
        is what resets its peer.
        """
        assert outside.socket.recv(1, socket.MSG_PEEK), "a reset needs unread bytes"
        outside.socket.close()
        outside.closed = True
        self.settle()

    def clientResets(self) -> None:
        self._reset(self.client)

    def targetResets(self) -> None:
        self._reset(self.target)

    def _received(self, outside: Outside) -> bytes:
        while outside.read():
            self.settle()
        return outside.received

    def clientReceived(self) -> bytes:
        return self._received(self.client)

    def targetReceived(self) -> bytes:
        return self._received(self.target)

    def clientSees(self) -> str:
        return self.client.sees()

    def targetSees(self) -> str:
        return self.target.sees()

    def keepalive(self) -> tuple[bool, bool]:
        return tuple(
            bool(side.inside.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
            for side in (self.client, self.target)
        )


class ConnectionTestCase(SynchronousTestCase):
    """
    Records the tracker's reports and the connection's log lines, with
    debug lines shown.
    """

    def setUp(self) -> None:
        self.tracker = FakeTracker()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        logs.setLevel("debug")
        self.addCleanup(logs.setLevel, "info")

    def lines(self, level: LogLevel) -> list[str]:
        """
        The text of the connection's, its factory's and its close line's
        log lines at C{level}.
        """
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_namespace", "").startswith(
                (
                    "socketproxyd.stream.connection",
                    "socketproxyd.stream.factory",
                    "socketproxyd.service.closelog",
                )
            )
            and event["log_level"] is level
        ]


class KeepaliveBehaviour:
    """
    Keepalive on every pump, written once; the splice pump's variant needs
    TCP sockets on the loopback interface, so it is an integration test.
    """

    def harness(self, **settings: object) -> TransportHarness | SpliceHarness:
        raise NotImplementedError

    def test_keepalive(self) -> None:
        """
        TCP keepalive is enabled on both sockets when asked for, and only
        then.
        """
        self.assertEqual(self.harness(keepalive=True).keepalive(), (True, True))
        self.assertEqual(self.harness().keepalive(), (False, False))


class RecordingConnection:
    """
    Stands in for the L{socketproxyd.stream.connection.Connection} of a pump:
    records every report, and answers as the real one does: an end of
    stream is forwarded at once (unless C{forwardEnds} is false), both
    directions shut close the pump, a failure aborts it.

    @ivar moves: every C{moved} report, as C{(direction, count)}.
    @ivar readEnds: the directions reported ended, in order.
    @ivar writeShuts: the directions reported shut, in order.
    @ivar failures: how many times the pump reported a failure.
    @ivar closings: how many times the pump reported it closed.
    """

    def __init__(self, pump: SplicePump, forwardEnds: bool = True) -> None:
        self.pump = pump
        pump.connection = self
        self.forwardEnds = forwardEnds
        self.moves: list[tuple[int, int]] = []
        self.readEnds: list[int] = []
        self.writeShuts: list[int] = []
        self.failures = 0
        self.closings = 0
        self.ending = False

    def counts(self) -> tuple[int, int]:
        """
        Bytes moved upstream and downstream.
        """
        return (
            sum(count for direction, count in self.moves if direction == UPSTREAM),
            sum(count for direction, count in self.moves if direction == DOWNSTREAM),
        )

    def moved(self, direction: int, count: int) -> None:
        self.moves.append((direction, count))

    def readEnded(self, direction: int) -> None:
        self.readEnds.append(direction)
        if self.forwardEnds and not self.ending:
            self.pump.shutdownWrite(direction)

    def writeShut(self, direction: int) -> None:
        self.writeShuts.append(direction)
        if set(self.writeShuts) == {UPSTREAM, DOWNSTREAM}:
            self.end(reset=False)

    def failed(self) -> None:
        self.failures += 1
        self.end(reset=True)

    def end(self, reset: bool) -> None:
        if self.ending:
            return
        self.ending = True
        if reset:
            self.pump.abort()
        else:
            self.pump.close()

    def closed(self) -> None:
        self.closings += 1


class PausedTransport:
    """
    The parts of a paused Twisted transport a pump borrows the socket of.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.reading = self.writing = True
        self.calls: list[str] = []

    def getHandle(self) -> socket.socket:
        return self.socket

    def stopReading(self) -> None:
        self.reading = False

    def stopWriting(self) -> None:
        self.writing = False

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")


class TransportProtocol:
    """
    A protocol on a Twisted transport, as a fallback endpoint gives it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.transport = PausedTransport(sock)


class SplicePumpTestCase(SynchronousTestCase):
    """
    The fixture of the splice pump tests: a pump between two socket
    pairs; C{client} and C{target} are the far ends, the pump holds the
    near ones.
    """

    def setUp(self) -> None:
        if not pipes.available():
            raise SkipTest("splice(2) is not available")
        self.reactor = FakeFDReactor()
        self.clock = Clock()
        self.outOfFds = 0
        self.sweeper = PipeSweeper(self.clock, outOfFds=self.countOutOfFds)
        self.client, self.clientInside = self.pair()
        self.target, self.targetInside = self.pair()
        self.pump, self.connection = self.attached(self.clientInside, self.targetInside)
        self.clientEnd, self.targetEnd = self.pump.ends

    def countOutOfFds(self) -> None:
        self.outOfFds += 1

    def pair(self) -> tuple[socket.socket, socket.socket]:
        outside, inside = socket.socketpair()
        for sock in (outside, inside):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return outside, inside

    def tcpPair(self) -> tuple[socket.socket, socket.socket]:
        """
        A connected loopback TCP pair, outside end first.
        """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        outside = socket.create_connection(server.getsockname())
        inside, _ = server.accept()
        server.close()
        for sock in (outside, inside):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return outside, inside

    def attached(
        self,
        client: socket.socket,
        target: object,
        preamble: bytes = b"",
        keepalive: bool = False,
    ) -> tuple[SplicePump, RecordingConnection]:
        pump = SplicePump(self.reactor, self.sweeper, client, keepalive)
        connection = RecordingConnection(pump)
        pump.attach(target, preamble)
        return pump, connection

    def tcpPump(self) -> tuple[socket.socket, socket.socket, SplicePump, RecordingConnection]:
        """
        A pump between two TCP pairs: the client, the target, the pump and
        its connection.
        """
        client, clientInside = self.tcpPair()
        target, targetInside = self.tcpPair()
        pump, connection = self.attached(clientInside, targetInside)
        return client, target, pump, connection

    def fillUntilBlocked(self) -> bytes:
        """
        Send from the client and have the pump read, until the target's
        socket is full and the pump stops reading the client: what the
        client sent.
        """
        self.target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        chunk = os.urandom(1 << 16)
        sent = b""
        while self.clientEnd in self.reactor.readers:
            try:
                sent += chunk[: self.client.send(chunk)]
            except BlockingIOError:
                pass
            self.clientEnd.doRead()
        return sent

    def reactorLoses(self, end: object, reason: Exception) -> None:
        """
        What Twisted's reactor does on a hang-up or error: take the socket
        out of its readers and writers, then report it lost.
        """
        self.reactor.removeReader(end)
        self.reactor.removeWriter(end)
        end.connectionLost(Failure(reason))


def recvAvailable(sock: socket.socket) -> bytes:
    """
    Everything readable now from a non-blocking socket, up to its end of
    stream.
    """
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
