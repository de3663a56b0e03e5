"""
Real-socket helpers for the integration tests: listening sockets of each
kind and blocking clients for them, reproducible payloads and their hashes,
a threaded backend standing in for the proxy's target with the handlers it
runs, and waiting for a UNIX socket to listen.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT = 30.0


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
    L{listeningSocket}, within C{timeout}. A UNIX socket connects in
    blocking mode, bounded by C{SO_SNDTIMEO}: in Python's timeout mode the
    connect is non-blocking, and on a UNIX socket whose backlog is full
    that fails at once with EAGAIN instead of waiting for the listener
    (a TCP client's SYN is retried by the kernel).
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
    try:
        if sock.family == socket.AF_UNIX:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(timeout), 0)
            )
            sock.connect(target)
            sock.settimeout(timeout)
        else:
            sock.settimeout(timeout)
            sock.connect(target)
    except BaseException:
        sock.close()
        raise
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
