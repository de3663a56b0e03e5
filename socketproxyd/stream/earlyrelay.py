# -*- test-case-name: tests.unit.test_earlyrelay -*-
"""
The first clients of a socket-activated proxy, served while Twisted loads.

Socket activation starts the proxy when its first client arrives, and that
client waits for the process to start; importing Twisted's reactor takes
about fifteen times as long as the rest of the start. So when the console
script finds a client already waiting on an inherited socket
(L{beginEarlyRelay}), an L{EarlyRelay} accepts the waiting clients (within
C{-c}), connects each to a literal TARGET, sends the PROXY header if asked,
and moves bytes both ways with non-blocking socket calls and C{poll}, on a
thread of its own, while the main thread imports Twisted as it always
does.

Once the proxy is built, L{Handover.finish} stops the relay, and each
L{EarlyPair} (both sockets, each direction's byte count, end of stream and
unsent bytes) is handed to a L{socketproxyd.stream.connection.Connection},
which adopts it (L{socketproxyd.stream.connection.Connection.adopt}) and
from then on serves it as any other: the rules (half-close, resets,
connect failures and retries, the limit, the close line) stay the
Connection's. The relay only moves bytes and records what happened; it
forwards an end of stream as a write shutdown once what preceded it is
out, as the Connection would, and leaves everything else for the
hand-over: a socket that failed (a reset) is handed over failed and reset
by the Connection, a target that refused or is still connecting is handed
over unconnected and connected again by the Connection, with its timeout,
retries and warning.

Only command lines this module understands take this path
(L{EarlyPlan.fromArgv}): anything else (routes, a name to resolve, the
transport data path, options it does not know) starts as before, and the
command line is parsed and checked in full once Twisted is loaded either
way.

Every millisecond of this module's own start is the first client's: it
imports no Twisted and, of the standard library, only modules built into
the interpreter. The socket, signal and threading modules would cost 4-7 ms
each (C{enum}, C{collections}, C{selectors}), as much as the whole relay
takes; their C cores (C{_socket}, C{_signal}, C{_thread}) do the same work,
and the relay's sockets become C{socket.socket} objects at the hand-over.
Twisted, and with it the threading module, is imported on the main thread,
as without the relay.
"""

from __future__ import annotations

import _socket
import _thread
import errno
import os
import select
import sys
import time

from socketproxyd.systemd.activation import ActivationError, InheritedSocket, inheritedSockets

try:
    import _signal  # type: ignore[import-not-found]
except ImportError:  # not CPython
    _signal = None

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from types import FrameType

    from socketproxyd.addresses import SocketAddress

READ_SIZE = 64 * 1024
"""
The most bytes read at once from one socket, and so the most a direction
holds unsent: a direction whose bytes are not yet all sent is not read.
"""

HEAD_START = 0.002
"""
How long the relay waits, at most, for its first connects before Twisted's
import begins.
"""

SWITCH_INTERVAL = 0.0002
"""
How long the main thread, importing Twisted, may hold the interpreter while
the relay has bytes to move (the default, 5 ms, would add that much to
every wake-up).
"""

_VALUED = frozenset(
    (
        "connections-max", "exit-idle-time", "connect-timeout", "connect-retry",
        "idle-timeout", "drain-timeout", "proxy-protocol", "data-path", "pipe-size",
        "log-level", "metrics", "listen",
    )
)  # fmt: skip
_FLAGS = frozenset(("keepalive",))
NOT_SERVED = frozenset(("target", "help", "version", "accept-proxy-protocol", "transparent"))
"""
The options that send a command line to the normal path: the relay would
not serve it as the proxy does (routes, a header to read first), or there
is nothing to serve.
"""
_HEADERS = ("v1", "v2")
_CLIENT_GONE = frozenset((errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.EINTR))
_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP) if _signal is not None else ()
"""
The signals the relay records until the proxy's own handlers take over.
"""
UPSTREAM, DOWNSTREAM = 0, 1
_BUILT_IN = hasattr(os, "splice") and _signal is not None and hasattr(_socket.socket, "_accept")
"""
Whether the relay can run here: the splice path the Connections take it
over on, and the C cores it uses (CPython's).
"""


def _options(argv: Sequence[str]) -> tuple[dict[str, str], list[str]] | None:
    """
    The options and arguments of C{argv} as Twisted's C{usage.Options}
    reads them (C{getopt}: options stop at the first argument or C{--}),
    or C{None} for an option this module does not know.
    """
    values: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
            if name in _FLAGS and not equals:
                values[name] = ""
                continue
            if name not in _VALUED:
                return None
        elif arg.startswith("-c"):
            name, equals, value = "connections-max", "", arg[2:]
            equals = "=" if value else ""
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            args.insert(0, arg)
            break
        if not equals:
            if not args:
                return None
            value = args.pop(0)
        values[name] = value
    return values, args


def literalTarget(text: str) -> SocketAddress | None:
    """
    The socket address of a TARGET that is a literal address (C{/path},
    C{@abstract}, C{[v6]:port}, C{v4:port}, port 80 when none is given),
    as L{socketproxyd.config.target.parseTarget} reads it; C{None} for
    any other TARGET, which the full grammar parses (and checks) once
    Twisted is loaded.
    """
    if text.startswith("/"):
        address = text
        return (_socket.AF_UNIX, address) if len(text.encode()) <= 107 else None
    if text.startswith("@"):
        return (_socket.AF_UNIX, "\0" + text[1:]) if 1 < len(text.encode()) <= 107 else None
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            return None
        family = _socket.AF_INET6
    else:
        host, close, rest = text.partition(":")
        rest = ":" + rest if close else ""
        family = _socket.AF_INET
    port = rest[1:] if rest.startswith(":") else "80" if rest == "" else ""
    if not port.isdigit() or not 1 <= int(port) <= 65535 or "\0" in text:
        return None
    try:
        _socket.inet_pton(family, host)
    except OSError:
        return None
    if family == _socket.AF_INET:
        return family, (host, int(port))
    return family, (host, int(port), 0, 0)


class EarlyPlan:
    """
    What the early relay needs of the command line: the target's socket
    address, C{-c}, the PROXY header version, the name of an inherited
    socket that serves metrics rather than clients, and C{--keepalive}.
    """

    __slots__ = ("target", "connectionsMax", "proxyProtocol", "metricsName", "keepalive")

    def __init__(
        self,
        target: SocketAddress,
        connectionsMax: int = 256,
        proxyProtocol: str | None = None,
        metricsName: str | None = None,
        keepalive: bool = False,
    ) -> None:
        self.target = target
        self.connectionsMax = connectionsMax
        self.proxyProtocol = proxyProtocol
        self.metricsName = metricsName
        self.keepalive = keepalive

    @classmethod
    def fromArgv(cls, argv: Sequence[str]) -> EarlyPlan | None:
        """
        The plan for C{argv}, or C{None} where the early relay cannot serve
        it exactly as the proxy would: routes, a TARGET that is not a
        literal address, the transport data path, no splice(2), or
        anything it does not understand. A bad value is left for the full
        parse to report.
        """
        parsed = _options(argv)
        if parsed is None or not _BUILT_IN:
            return None
        values, args = parsed
        if len(args) != 1:
            return None
        limit = values.get("connections-max", "256").strip()
        header = values.get("proxy-protocol")
        metrics = values.get("metrics")
        target = literalTarget(args[0])
        if (
            target is None
            or not limit.isdigit()
            or int(limit) < 1
            or header not in (None, *_HEADERS)
            or values.get("data-path", "auto") not in ("auto", "splice")
        ):
            return None
        metricsName = metrics if metrics is not None and ":" not in metrics else None
        return cls(target, int(limit), header, metricsName, "keepalive" in values)


class Direction:
    """
    One direction of an early pair: the bytes read from its source, those
    read but not yet sent, whether its source ended, and whether its
    destination's write side was shut down for it.
    """

    __slots__ = ("count", "backlog", "ended", "shut")

    def __init__(self) -> None:
        self.count = 0
        self.backlog = b""
        self.ended = False
        self.shut = False


class EarlyPair:
    """
    A client the early relay accepted, and what it did with it: the state
    a Connection adopts.

    @ivar name: the name of the inherited socket it came by.
    @ivar peer: the client's address as C{accept} gave it.
    @ivar accepted: when it was accepted (C{time.time()}, the reactor's
        clock).
    @ivar target: the connected target socket; C{None} if there is none
        (refused, still connecting at the hand-over, not tried).
    @ivar connecting: the target socket while its connect is in progress.
    @ivar connected: when the target connected.
    @ivar lastMoved: when a byte last moved.
    @ivar directions: L{UPSTREAM}'s and L{DOWNSTREAM}'s L{Direction}.
    @ivar failed: whether a socket failed (a reset, a refused write).
    """

    __slots__ = (
        "name", "client", "peer", "accepted", "target", "connecting", "connected",
        "lastMoved", "directions", "failed",
    )  # fmt: skip

    def __init__(self, name: str, client: _socket.socket, peer: object, accepted: float) -> None:
        self.name = name
        self.client = client
        self.peer = peer
        self.accepted = accepted
        self.target: _socket.socket | None = None
        self.connecting: _socket.socket | None = None
        self.connected = 0.0
        self.lastMoved = 0.0
        self.directions = (Direction(), Direction())
        self.failed = False

    def sockets(self) -> tuple[socket.socket, socket.socket | None]:
        """
        The client's and the target's socket, once handed over (as
        C{socket.socket} objects, see L{EarlyRelay.handOver}).
        """
        import socket

        client, target = self.client, self.target
        assert isinstance(client, socket.socket), "handed over"
        assert target is None or isinstance(target, socket.socket), "handed over"
        return client, target

    def source(self, direction: int) -> _socket.socket | None:
        return self.client if direction == UPSTREAM else self.target

    def destination(self, direction: int) -> _socket.socket | None:
        return self.target if direction == UPSTREAM else self.client

    def finished(self) -> bool:
        """
        Whether nothing is left for the relay to do: a socket failed, or
        both directions are shut.
        """
        return self.failed or all(d.shut for d in self.directions)


class EarlyRelay:
    """
    Accepts clients on the inherited stream sockets and relays their bytes
    until told to stop (see the module docstring).
    """

    def __init__(self, plan: EarlyPlan, listeners: Sequence[tuple[str, _socket.socket]]) -> None:
        self.plan = plan
        self.listeners = list(listeners)
        self.pairs: list[EarlyPair] = []
        self.accepting = True
        self.poller = select.poll()
        self.registered: dict[int, int] = {}

    def acceptWaiting(self) -> bool:
        """
        Accept the clients already waiting (without waiting for any), and
        start serving each; whether there was one.
        """
        for name, listener in self.listeners:
            self.accept(name, listener)
        return bool(self.pairs)

    def serve(self, stop: int) -> list[EarlyPair]:
        """
        Relay until C{stop} (a file descriptor) is readable; the pairs,
        for their hand-over.
        """
        while self.step(stop) is not None:
            pass
        self._unregisterAll()
        return self.pairs

    def headStart(self, stop: int, budget: float = HEAD_START) -> None:
        """
        Before Twisted's import takes the interpreter: handle what is ready
        now, and wait for the connects in flight for up to C{budget}
        seconds (a local target answers in microseconds), so that the
        first bytes are on their way before the relay has to share the
        interpreter.
        """
        deadline = time.monotonic() + budget
        while True:
            left = deadline - time.monotonic()
            connecting = left > 0 and any(pair.connecting for pair in self.pairs)
            handled = self.step(stop, left * 1000 if connecting else 0)
            if left <= 0 or (not handled and not connecting):
                return

    def step(self, stop: int, timeout: float | None = None) -> int | None:
        """
        Wait for what the sockets wait for (or C{timeout} milliseconds)
        and handle it: one poll. How many sockets were handled, or C{None}
        once C{stop} is readable.
        """
        handlers = self._register(stop)
        ready = self.poller.poll(timeout)
        if any(fd == stop for fd, _ in ready):
            return None
        for fd, events in ready:
            handlers[fd](events)
        return len(ready)

    def _register(self, stop: int) -> dict[int, Callable[[int], None]]:
        wanted: dict[int, tuple[int, Callable[[int], None]]] = {stop: (select.POLLIN, _stopHandler)}
        if self.accepting and len(self.pairs) < self.plan.connectionsMax:
            for name, listener in self.listeners:
                wanted[listener.fileno()] = (select.POLLIN, self._acceptor(name, listener))
        for pair in self.pairs:
            if pair.connecting is not None:
                handler = self._connectHandler(pair, pair.connecting)
                wanted[pair.connecting.fileno()] = (select.POLLOUT, handler)
            elif pair.target is not None and not pair.finished():
                for sock, mask in self._interest(pair).items():
                    if mask:
                        wanted[sock.fileno()] = (mask, self._pairHandler(pair, sock))
        for fd in [fd for fd in self.registered if fd not in wanted]:
            self.poller.unregister(fd)
            del self.registered[fd]
        for fd, (mask, _) in wanted.items():
            if self.registered.get(fd) != mask:
                self.poller.register(fd, mask)
                self.registered[fd] = mask
        return {fd: handler for fd, (_, handler) in wanted.items()}

    def _unregisterAll(self) -> None:
        for fd in self.registered:
            self.poller.unregister(fd)
        self.registered.clear()

    @staticmethod
    def _interest(pair: EarlyPair) -> dict[_socket.socket, int]:
        """
        What each socket of a connected pair waits for: reading a source
        whose direction has nothing unsent and has not ended, writing a
        destination with bytes unsent.
        """
        masks: dict[_socket.socket, int] = {}
        for direction, state in enumerate(pair.directions):
            source, destination = pair.source(direction), pair.destination(direction)
            assert source is not None and destination is not None
            if not state.backlog and not state.ended:
                masks[source] = masks.get(source, 0) | select.POLLIN
            if state.backlog:
                masks[destination] = masks.get(destination, 0) | select.POLLOUT
        return masks

    def _acceptor(self, name: str, listener: _socket.socket) -> Callable[[int], None]:
        return lambda events: self.accept(name, listener)

    def _connectHandler(self, pair: EarlyPair, sock: _socket.socket) -> Callable[[int], None]:
        return lambda events: self._connectDone(pair, sock)

    def _pairHandler(self, pair: EarlyPair, sock: _socket.socket) -> Callable[[int], None]:
        return lambda events: self._ready(pair, sock, events)

    def accept(self, name: str, listener: _socket.socket) -> None:
        """
        Accept the clients waiting on C{listener}, as many as C{-c} leaves
        room for, and start connecting each to the target. Out of
        descriptors, accepting stops for the rest of the early phase: the
        clients wait in the backlog for the proxy proper.
        """
        while len(self.pairs) < self.plan.connectionsMax:
            try:
                fd, peer = listener._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _CLIENT_GONE:
                    continue
                self.accepting = False
                return
            client = _socket.socket(listener.family, _socket.SOCK_STREAM, 0, fd)
            client.setblocking(False)
            self._keepalive(client)
            pair = EarlyPair(name, client, peer, time.time())
            self.pairs.append(pair)
            self._connect(pair)

    def _keepalive(self, sock: _socket.socket) -> None:
        if self.plan.keepalive and sock.family != _socket.AF_UNIX:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)

    def _connect(self, pair: EarlyPair) -> None:
        family, address = self.plan.target
        try:
            sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
        except OSError:
            return
        code = sock.connect_ex(address)
        if code == 0:
            self._connected(pair, sock)
        elif code == errno.EINPROGRESS:
            pair.connecting = sock
        else:
            sock.close()

    def _connectDone(self, pair: EarlyPair, sock: _socket.socket) -> None:
        pair.connecting = None
        if sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR):
            sock.close()
        else:
            self._connected(pair, sock)

    def _connected(self, pair: EarlyPair, sock: _socket.socket) -> None:
        pair.target = sock
        pair.connected = pair.lastMoved = time.time()
        self._keepalive(sock)
        if self.plan.proxyProtocol is not None:
            from socketproxyd.proxyheader import HEADERS

            try:
                local = pair.client.getsockname()
            except OSError:
                pair.failed = True
                return
            header = HEADERS[self.plan.proxyProtocol](pair.peer, local)
            pair.directions[UPSTREAM].backlog = header
            self._send(pair, UPSTREAM)
        if not pair.directions[UPSTREAM].backlog and not pair.failed:
            self._receive(pair, UPSTREAM)

    def _ready(self, pair: EarlyPair, sock: _socket.socket, events: int) -> None:
        for direction in (UPSTREAM, DOWNSTREAM):
            if pair.finished():
                return
            state = pair.directions[direction]
            if sock is pair.destination(direction) and state.backlog:
                self._send(pair, direction)
            elif sock is pair.source(direction) and not state.backlog and not state.ended:
                self._receive(pair, direction)

    def _receive(self, pair: EarlyPair, direction: int) -> None:
        state = pair.directions[direction]
        source = pair.source(direction)
        assert source is not None
        try:
            data = source.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            pair.failed = True
            return
        if not data:
            state.ended = True
        else:
            state.count += len(data)
            state.backlog = data
            pair.lastMoved = time.time()
        self._send(pair, direction)

    def _send(self, pair: EarlyPair, direction: int) -> None:
        """
        Send what C{direction} holds; once all is out and its source has
        ended, shut its destination's write side (an end of stream
        forwarded, as the Connection does).
        """
        state = pair.directions[direction]
        destination = pair.destination(direction)
        assert destination is not None
        try:
            while state.backlog:
                sent = destination.send(state.backlog)
                state.backlog = state.backlog[sent:]
        except BlockingIOError:
            return
        except OSError:
            pair.failed = True
            return
        if state.ended and not state.shut:
            state.shut = True
            try:
                destination.shutdown(_socket.SHUT_WR)
            except OSError:
                pass

    def handOver(self) -> list[EarlyPair]:
        """
        The pairs as the Connections take them, their sockets now
        C{socket.socket} objects, non-blocking: a target still connecting
        is closed (its Connection connects again, bounded by its own
        timeout), and so are the relay's copies of the listeners.
        """
        for pair in self.pairs:
            if pair.connecting is not None:
                pair.connecting.close()
                pair.connecting = None
            pair.client = _adopted(pair.client)
            if pair.target is not None:
                pair.target = _adopted(pair.target)
        for _, listener in self.listeners:
            listener.close()
        return self.pairs


def _adopted(sock: _socket.socket) -> socket.socket:
    """
    C{sock} as a non-blocking C{socket.socket}.
    """
    import socket

    adopted = socket.socket(sock.family, sock.type, sock.proto, sock.detach())
    adopted.setblocking(False)
    return adopted


def _stopHandler(events: int) -> None:
    """
    The stop descriptor's handler, never called: the relay returns once
    it is readable.
    """


class Handover:
    """
    The early phase: the inherited sockets it read (or the error reading
    them raised), the relay serving clients on its thread if there were
    clients waiting, the signals received since it began, and when it
    began; once finished, the pairs it served.

    @ivar error: what ended the relay's thread, if an error did: the
        pairs it had connected and not finished are then handed over as
        failed, to be reset (one it had not connected is connected by its
        Connection, one it had finished closes as it would have).
    @ivar reset: how many pairs were handed over as failed for it.
    """

    def __init__(self, inherited: list[InheritedSocket] | ActivationError, started: float) -> None:
        self.inherited = inherited
        self.started = started
        self.pairs: list[EarlyPair] = []
        self.signals: list[int] = []
        self.relay: EarlyRelay | None = None
        self._stop: tuple[int, int] | None = None
        self._stopped = _thread.allocate_lock()
        self.error: BaseException | None = None
        self.reset = 0
        self._interval = 0.0

    @property
    def failure(self) -> str | None:
        """
        The relay's error, as its line says it.
        """
        error = self.error
        return None if error is None else f"{type(error).__name__}: {error}"

    def findInherited(self) -> list[InheritedSocket]:
        """
        The inherited sockets, read once before Twisted loaded (which
        deletes C{LISTEN_*} from the environment as it does).
        """
        if isinstance(self.inherited, ActivationError):
            raise self.inherited
        return self.inherited

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def begin(self, relay: EarlyRelay) -> None:
        """
        Serve on C{relay}'s thread until L{finish}; record the signals
        received until the proxy's own handlers replace these.
        """
        self.relay = relay
        for signum in _SIGNALS:
            _signal.signal(signum, self._received)
        self._stop = os.pipe()
        relay.headStart(self._stop[0])
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._stopped.acquire()
        _thread.start_new_thread(self._serve, (relay, self._stop[0]))

    def _serve(self, relay: EarlyRelay, stop: int) -> None:
        try:
            relay.serve(stop)
        except BaseException as e:
            self.error = e
        finally:
            self._stopped.release()

    def finish(self) -> Handover:
        """
        Stop the relay and wait for its thread to end; the pairs are ready
        for their Connections.
        """
        if self.relay is None or self._stop is None:
            return self
        stopRead, stopWrite = self._stop
        self._stop = None
        os.write(stopWrite, b"x")
        self._stopped.acquire()
        sys.setswitchinterval(self._interval)
        os.close(stopRead)
        os.close(stopWrite)
        self.pairs = self.relay.handOver()
        if self.error is not None:
            for pair in self.pairs:
                if pair.target is not None and not pair.finished():
                    pair.failed = True
                    self.reset += 1
        return self


def beginEarlyRelay(argv: Sequence[str], environ: dict[str, str] | None = None) -> Handover | None:
    """
    If the command line allows it, read the inherited sockets and, if a
    client is waiting on one of stream sockets, start serving clients on a
    thread of their own; the early phase, or C{None} where the command line
    takes the normal path.
    """
    started = time.time()
    plan = EarlyPlan.fromArgv(argv)
    if plan is None:
        return None
    try:
        inherited = inheritedSockets(os.environ if environ is None else environ)
    except ActivationError as e:
        return Handover(e, started)
    handover = Handover(inherited, started)
    listeners = []
    for sock in inherited:
        if not sock.datagram and sock.name != plan.metricsName:
            listener = _socket.socket(sock.family, _socket.SOCK_STREAM, 0, os.dup(sock.fd))
            listener.setblocking(False)
            listeners.append((sock.name, listener))
    relay = EarlyRelay(plan, listeners)
    if relay.acceptWaiting():
        handover.begin(relay)
    else:
        relay.handOver()
    return handover
