# -*- test-case-name: tests.unit.test_earlyrelay -*-
"""
The first clients of a socket-activated proxy, served while Twisted loads.

Socket activation starts the proxy when its first client arrives, and that
client waits for the process to start; importing Twisted's reactor takes
about ten times as long as the rest of the start. So when the console
script finds a client already waiting on an inherited socket, it loads
Twisted on a second thread (L{serveWhileLoading}) and meanwhile, on the
main thread, an L{EarlyRelay} accepts the waiting clients (within C{-c}),
connects each to a literal TARGET, sends the PROXY header if asked, and
moves bytes both ways with non-blocking socket calls and C{poll}.

Once Twisted is loaded, each L{EarlyPair} (both sockets, each direction's
byte count, end of stream and unsent bytes) is handed to a
L{socketproxyd.stream.connection.Connection}, which adopts it
(L{socketproxyd.stream.connection.Connection.adopt}) and from then on
serves it as any other: the rules (half-close, resets, connect failures
and retries, the limit, the close line) stay the Connection's. The relay
only moves bytes and records what happened; it forwards an end of stream
as a write shutdown once what preceded it is out, as the Connection would,
and leaves everything else for the hand-over: a socket that failed (a
reset) is handed over failed and reset by the Connection, a target that
refused or is still connecting is handed over unconnected and connected
again by the Connection, with its timeout, retries and warning.

Only command lines this module understands take this path
(L{EarlyPlan.fromArgv}): anything else (routes, a name to resolve, the
transport data path, options it does not know) starts as before, and the
command line is parsed and checked in full once Twisted is loaded either
way. This module, and what it imports, need only the standard library, and
only its cheapest modules (no C{typing}, C{dataclasses}, C{re} or
C{ipaddress}: each would cost the first client more than the relay does).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import threading
import time

from socketproxyd.systemd.activation import ActivationError, InheritedSocket, inheritedSockets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType

    from socketproxyd.addresses import SocketAddress

READ_SIZE = 64 * 1024
"""
The most bytes read at once from one socket, and so the most a direction
holds unsent: a direction whose bytes are not yet all sent is not read.
"""

SWITCH_INTERVAL = 0.0005
"""
How long the loading thread may hold the interpreter while the relay has
bytes to move (the default, 5 ms, would add that much to every wake-up).
"""

_VALUED = frozenset(
    (
        "connections-max", "exit-idle-time", "connect-timeout", "connect-retry",
        "idle-timeout", "drain-timeout", "proxy-protocol", "data-path", "pipe-size",
        "log-level", "metrics", "listen",
    )
)  # fmt: skip
_FLAGS = frozenset(("keepalive",))
_HEADERS = ("v1", "v2")
_CLIENT_GONE = frozenset((errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.EINTR))
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
UPSTREAM, DOWNSTREAM = 0, 1


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
        return (socket.AF_UNIX, address) if len(text.encode()) <= 107 else None
    if text.startswith("@"):
        return (socket.AF_UNIX, "\0" + text[1:]) if 1 < len(text.encode()) <= 107 else None
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            return None
        family = socket.AF_INET6
    else:
        host, close, rest = text.partition(":")
        rest = ":" + rest if close else ""
        family = socket.AF_INET
    port = rest[1:] if rest.startswith(":") else "80" if rest == "" else ""
    if not port.isdigit() or not 1 <= int(port) <= 65535 or "\0" in text:
        return None
    try:
        socket.inet_pton(family, host)
    except OSError:
        return None
    if family == socket.AF_INET:
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
        if parsed is None or not hasattr(os, "splice"):
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

    def __init__(self, name: str, client: socket.socket, peer: object, accepted: float) -> None:
        self.name = name
        self.client = client
        self.peer = peer
        self.accepted = accepted
        self.target: socket.socket | None = None
        self.connecting: socket.socket | None = None
        self.connected = 0.0
        self.lastMoved = 0.0
        self.directions = (Direction(), Direction())
        self.failed = False

    def source(self, direction: int) -> socket.socket | None:
        return self.client if direction == UPSTREAM else self.target

    def destination(self, direction: int) -> socket.socket | None:
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

    def __init__(self, plan: EarlyPlan, listeners: Sequence[tuple[str, socket.socket]]) -> None:
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
        while self.step(stop):
            pass
        self._unregisterAll()
        return self.pairs

    def step(self, stop: int, timeout: int | None = None) -> bool:
        """
        Wait for what the sockets wait for (or C{timeout} milliseconds)
        and handle it: one poll. Whether C{stop} is still not readable.
        """
        handlers = self._register(stop)
        ready = self.poller.poll(timeout)
        if any(fd == stop for fd, _ in ready):
            return False
        for fd, events in ready:
            handlers[fd](events)
        return True

    def _register(self, stop: int) -> dict[int, Callable[[int], None]]:
        wanted: dict[int, tuple[int, Callable[[int], None]]] = {stop: (select.POLLIN, _stopped)}
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
    def _interest(pair: EarlyPair) -> dict[socket.socket, int]:
        """
        What each socket of a connected pair waits for: reading a source
        whose direction has nothing unsent and has not ended, writing a
        destination with bytes unsent.
        """
        masks: dict[socket.socket, int] = {}
        for direction, state in enumerate(pair.directions):
            source, destination = pair.source(direction), pair.destination(direction)
            assert source is not None and destination is not None
            if not state.backlog and not state.ended:
                masks[source] = masks.get(source, 0) | select.POLLIN
            if state.backlog:
                masks[destination] = masks.get(destination, 0) | select.POLLOUT
        return masks

    def _acceptor(self, name: str, listener: socket.socket) -> Callable[[int], None]:
        return lambda events: self.accept(name, listener)

    def _connectHandler(self, pair: EarlyPair, sock: socket.socket) -> Callable[[int], None]:
        return lambda events: self._connectDone(pair, sock)

    def _pairHandler(self, pair: EarlyPair, sock: socket.socket) -> Callable[[int], None]:
        return lambda events: self._ready(pair, sock, events)

    def accept(self, name: str, listener: socket.socket) -> None:
        """
        Accept the clients waiting on C{listener}, as many as C{-c} leaves
        room for, and start connecting each to the target. Out of
        descriptors, accepting stops for the rest of the early phase: the
        clients wait in the backlog for the proxy proper.
        """
        while len(self.pairs) < self.plan.connectionsMax:
            try:
                client, peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _CLIENT_GONE:
                    continue
                self.accepting = False
                return
            client.setblocking(False)
            self._keepalive(client)
            pair = EarlyPair(name, client, peer, time.time())
            self.pairs.append(pair)
            self._connect(pair)

    def _keepalive(self, sock: socket.socket) -> None:
        if self.plan.keepalive and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def _connect(self, pair: EarlyPair) -> None:
        family, address = self.plan.target
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError:
            return
        code = sock.connect_ex(address)
        if code == 0:
            self._connected(pair, sock)
        elif code == errno.EINPROGRESS:
            pair.connecting = sock
        else:
            sock.close()

    def _connectDone(self, pair: EarlyPair, sock: socket.socket) -> None:
        pair.connecting = None
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            sock.close()
        else:
            self._connected(pair, sock)

    def _connected(self, pair: EarlyPair, sock: socket.socket) -> None:
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
        self._receive(pair, UPSTREAM)

    def _ready(self, pair: EarlyPair, sock: socket.socket, events: int) -> None:
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
                destination.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def handOver(self) -> list[EarlyPair]:
        """
        The pairs as the Connections take them: a target still connecting
        is closed (its Connection connects again, bounded by its own
        timeout), and so are the relay's copies of the listeners.
        """
        for pair in self.pairs:
            if pair.connecting is not None:
                pair.connecting.close()
                pair.connecting = None
        for _, listener in self.listeners:
            listener.close()
        return self.pairs


def _stopped(events: int) -> None:
    """
    The stop descriptor's handler, never called: the relay returns once
    it is readable.
    """


class Handover:
    """
    What the early phase leaves for the proxy proper: the inherited
    sockets it read (or the error reading them raised), the pairs it
    served, the signals it received, and when it started.
    """

    def __init__(self, inherited: list[InheritedSocket] | ActivationError, started: float) -> None:
        self.inherited = inherited
        self.started = started
        self.pairs: list[EarlyPair] = []
        self.signals: list[int] = []

    def findInherited(self) -> list[InheritedSocket]:
        """
        The inherited sockets, read once before Twisted loaded (which
        deletes C{LISTEN_*} from the environment as it does).
        """
        if isinstance(self.inherited, ActivationError):
            raise self.inherited
        return self.inherited


def serveWhileLoading(
    argv: Sequence[str], load: Callable[[], object], environ: dict[str, str] | None = None
) -> Handover | None:
    """
    If the command line allows it and a client is waiting on an inherited
    stream socket, call C{load} on a second thread and serve clients on
    this one until it returns; the hand-over, or C{None} where there was no
    early phase (C{load} has not been called then). A signal received
    from then on (SIGTERM, SIGINT, SIGHUP) until the proxy's own handlers
    replace the relay's, as the reactor starts, is recorded in the
    hand-over, for the proxy to act on once it runs.
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
            listener = socket.socket(sock.family, socket.SOCK_STREAM, fileno=os.dup(sock.fd))
            listener.setblocking(False)
            listeners.append((sock.name, listener))
    relay = EarlyRelay(plan, listeners)
    if not relay.acceptWaiting():
        relay.handOver()
        return handover
    stopRead, stopWrite = os.pipe()
    failures: list[BaseException] = []

    def loadThenStop() -> None:
        try:
            load()
        except BaseException as e:
            failures.append(e)
        finally:
            os.write(stopWrite, b"x")

    def received(signum: int, frame: FrameType | None) -> None:
        handover.signals.append(signum)

    for signum in _SIGNALS:
        signal.signal(signum, received)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    loader = threading.Thread(target=loadThenStop, name="load", daemon=True)
    loader.start()
    try:
        relay.serve(stopRead)
    finally:
        loader.join()
        sys.setswitchinterval(interval)
        os.close(stopRead)
        os.close(stopWrite)
    handover.pairs = relay.handOver()
    if failures:
        raise failures[0]
    return handover
