"""
Unit tests for L{socketproxyd.stream.earlyrelay}: the command lines it
serves, the relay itself on real sockets (UNIX and loopback TCP, driven
one poll at a time), and the hand-over of its pairs to a Connection on the
splice pump, whose reactor the test is.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd import events
from socketproxyd.config.settings import ProxySettings
from socketproxyd.config.target import parseTarget
from socketproxyd.events import Ending
from socketproxyd.proxyheader import headerV1
from socketproxyd.stream import earlyrelay
from socketproxyd.stream.earlyrelay import (
    DOWNSTREAM,
    READ_SIZE,
    UPSTREAM,
    EarlyPair,
    EarlyPlan,
    EarlyRelay,
    literalTarget,
)
from socketproxyd.stream.pump import Flow
from socketproxyd.tap import Options
from tests.support.fakes import ConnectionTestCase
from tests.support.sockets import unixPath
from tests.support.splicing import SpliceHarness

LINGER_RESET = struct.pack("ii", 1, 0)


class PlanTests(SynchronousTestCase):
    """
    L{EarlyPlan.fromArgv} takes the command lines the early relay serves as
    the proxy would, and leaves every other one to the full parse.
    """

    def test_literalTargetsAsTheGrammarReadsThem(self) -> None:
        """
        L{literalTarget} gives, for each literal TARGET, the socket address
        the full grammar gives.
        """
        for text in (
            "/run/app.sock",
            "@abstract",
            "127.0.0.1:8080",
            "127.0.0.1",
            "10.1.2.3:65535",
            "[::1]:8080",
            "[::1]",
            "[2001:db8::5]:1",
        ):
            expected = parseTarget(text).socketAddress(socket.SOCK_STREAM)
            self.assertEqual(literalTarget(text), expected, text)

    def test_otherTargetsLeftToTheGrammar(self) -> None:
        """
        Names, service names, the unbracketed IPv6 form, scoped addresses
        and malformed targets take the normal path.
        """
        for text in (
            "localhost:80",
            "example.com",
            "127.0.0.1:http",
            "::1:8080",
            "[::1",
            "[fe80::1%lo]:80",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "01.2.3.4:80",
            "",
            "@",
            "/" + "x" * 200,
        ):
            self.assertIsNone(literalTarget(text), text)

    def test_servedCommandLines(self) -> None:
        """
        The forms Twisted's option parser accepts for what the relay needs.
        """
        target = (socket.AF_INET, ("127.0.0.1", 9000))
        cases = {
            ("127.0.0.1:9000",): (256, None, None, False),
            ("-c", "5", "127.0.0.1:9000"): (5, None, None, False),
            ("-c5", "127.0.0.1:9000"): (5, None, None, False),
            ("--connections-max=7", "127.0.0.1:9000"): (7, None, None, False),
            ("--connections-max", "7", "127.0.0.1:9000"): (7, None, None, False),
            ("--keepalive", "--proxy-protocol=v2", "127.0.0.1:9000"): (256, "v2", None, True),
            ("--metrics=metrics", "--", "127.0.0.1:9000"): (256, None, "metrics", False),
            ("--metrics=tcp:9105", "--log-level=debug", "127.0.0.1:9000"): (
                256,
                None,
                None,
                False,
            ),
            ("--idle-timeout", "5s", "--data-path=splice", "127.0.0.1:9000"): (
                256,
                None,
                None,
                False,
            ),
        }
        for argv, (limit, header, metrics, keepalive) in cases.items():
            plan = EarlyPlan.fromArgv(argv)
            assert plan is not None, argv
            self.assertEqual(
                (plan.target, plan.connectionsMax, plan.proxyProtocol, plan.metricsName),
                (target, limit, header, metrics),
                argv,
            )
            self.assertEqual(plan.keepalive, keepalive, argv)

    def test_otherCommandLinesLeftToTheProxy(self) -> None:
        """
        Routes, the transport path, help, unknown or abbreviated options,
        missing values, bad values it needs, and extra arguments.
        """
        for argv in (
            ("--target=web=/run/web.sock", "127.0.0.1:9000"),
            ("--data-path=transport", "127.0.0.1:9000"),
            ("--help",),
            ("-h", "127.0.0.1:9000"),
            ("--version",),
            ("--conn=5", "127.0.0.1:9000"),
            ("-x", "127.0.0.1:9000"),
            ("--log-level",),
            ("-c", "0", "127.0.0.1:9000"),
            ("-c", "many", "127.0.0.1:9000"),
            ("--proxy-protocol=v3", "127.0.0.1:9000"),
            ("127.0.0.1:9000", "--keepalive"),
            ("localhost:9000",),
            (),
        ):
            self.assertIsNone(EarlyPlan.fromArgv(argv), argv)

    def test_everyOptionKnown(self) -> None:
        """
        Every option of the command line is one the relay reads past, or
        one that sends it to the normal path: a new option must be placed
        in one or the other.
        """
        declared = {name.removesuffix("=") for name in Options().longOpt}
        self.assertEqual(declared - earlyrelay.NOT_SERVED, earlyrelay._VALUED | earlyrelay._FLAGS)
        self.assertEqual(earlyrelay.NOT_SERVED - declared, set())
        self.assertIsNone(EarlyPlan.fromArgv(["--accept-proxy-protocol", "127.0.0.1:80"]))

    def test_directionsAsTheEvents(self) -> None:
        """
        The relay numbers the directions as the rest of the proxy does.
        """
        self.assertEqual((UPSTREAM, DOWNSTREAM), (events.UPSTREAM, events.DOWNSTREAM))


class RelayTests(SynchronousTestCase):
    """
    L{EarlyRelay} between real clients and a real target: the test plays
    both, and runs the relay one poll at a time until what it waits for
    has happened.
    """

    def setUp(self) -> None:
        self.stopRead, self.stopWrite = os.pipe()
        self.addCleanup(os.close, self.stopRead)
        self.addCleanup(os.close, self.stopWrite)

    def relay(self, target: str = "unix", **plan: object) -> EarlyRelay:
        if target == "unix":
            path = unixPath(self, "target")
            self.backend = socket.socket(socket.AF_UNIX)
            self.backend.bind(path)
            address: tuple[int, object] = (socket.AF_UNIX, path)
        else:
            self.backend = socket.socket()
            self.backend.bind(("127.0.0.1", 0))
            address = (socket.AF_INET, self.backend.getsockname())
        self.addCleanup(self.backend.close)
        if target != "refusing":
            self.backend.listen(8)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        self.listener = listener
        self.listenAddress = listener.getsockname()
        relay = EarlyRelay(EarlyPlan(address, **plan), [("web", listener)])  # type: ignore[arg-type]
        self.addCleanup(relay.handOver)
        return relay

    def client(self) -> socket.socket:
        sock = socket.create_connection(self.listenAddress)
        sock.settimeout(10)
        self.addCleanup(sock.close)
        return sock

    def accepted(self, relay: EarlyRelay) -> socket.socket:
        """
        Accept the client waiting, and the relay's connection at the target.
        """
        self.assertTrue(relay.acceptWaiting())
        server, _ = self.backend.accept()
        server.settimeout(10)
        self.addCleanup(server.close)
        return server

    def runUntil(self, relay: EarlyRelay, done: object) -> None:
        """
        Run the relay until C{done()} holds (within 10 s of polls).
        """
        deadline = time.monotonic() + 10
        while not done():  # type: ignore[operator]
            self.assertLess(time.monotonic(), deadline, "the relay did not get there")
            relay.step(self.stopRead, 100)

    def test_bytesBothWays(self) -> None:
        """
        Bytes go each way and are counted; the pair records its name and
        when it was accepted and connected.
        """
        relay = self.relay()
        client = self.client()
        before = time.time()
        server = self.accepted(relay)
        client.sendall(b"hello")
        self.runUntil(relay, lambda: relay.pairs[0].directions[UPSTREAM].count == 5)
        self.assertEqual(server.recv(100), b"hello")
        server.sendall(b"world!")
        self.runUntil(relay, lambda: relay.pairs[0].directions[DOWNSTREAM].count == 6)
        self.assertEqual(client.recv(100), b"world!")
        [pair] = relay.pairs
        self.assertEqual(pair.name, "web")
        self.assertLessEqual(before, pair.accepted)
        self.assertLessEqual(pair.accepted, pair.connected)
        self.assertEqual([d.backlog for d in pair.directions], [b"", b""])

    def test_halfClose(self) -> None:
        """
        A client's end of stream is forwarded as a write shutdown once its
        bytes are out; the other direction keeps flowing.
        """
        relay = self.relay()
        client = self.client()
        server = self.accepted(relay)
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        [pair] = relay.pairs
        self.runUntil(relay, lambda: pair.directions[UPSTREAM].shut)
        self.assertEqual(server.recv(100), b"request")
        self.assertEqual(server.recv(100), b"")
        server.sendall(b"reply")
        self.runUntil(relay, lambda: pair.directions[DOWNSTREAM].count == 5)
        self.assertEqual(client.recv(100), b"reply")
        self.assertFalse(pair.finished())

    def test_resetRecorded(self) -> None:
        """
        A reset from the target marks the pair failed (the Connection
        resets the client at the hand-over); the relay stops serving it.
        """
        relay = self.relay(target="tcp")
        client = self.client()
        server = self.accepted(relay)
        [pair] = relay.pairs
        self.runUntil(relay, lambda: pair.target is not None)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        server.close()
        self.runUntil(relay, lambda: pair.failed)
        self.assertTrue(pair.finished())
        client.sendall(b"late")
        relay.step(self.stopRead, 0)
        self.assertEqual(pair.directions[UPSTREAM].count, 0)

    def test_refusedLeftUnconnected(self) -> None:
        """
        A target that refuses leaves the pair unconnected, and the client's
        bytes unread, for the Connection to retry and warn about.
        """
        relay = self.relay(target="refusing")
        client = self.client()
        client.sendall(b"waiting")
        self.assertTrue(relay.acceptWaiting())
        relay.step(self.stopRead, 0)
        [pair] = relay.pairs
        self.runUntil(relay, lambda: pair.connecting is None)
        self.assertIsNone(pair.target)
        self.assertEqual(pair.client.recv(100, socket.MSG_PEEK), b"waiting")

    def test_connectionsMax(self) -> None:
        """
        No more clients are accepted than C{-c} allows: the rest wait in
        the backlog, for the proxy proper.
        """
        relay = self.relay(connectionsMax=1)
        for _ in range(3):
            self.client()
        self.assertTrue(relay.acceptWaiting())
        for _ in range(3):
            relay.step(self.stopRead, 10)
        self.assertEqual(len(relay.pairs), 1)
        for _ in range(2):
            sock, _ = self.listener.accept()
            self.addCleanup(sock.close)
        self.assertRaises(BlockingIOError, self.listener.accept)

    def test_boundedWhileTheTargetDoesNotRead(self) -> None:
        """
        A target that does not read holds the relay to one read of
        unsent bytes: it stops reading the client, and once the target
        reads, every byte the client sent arrives, once.
        """
        relay = self.relay()
        client = self.client()
        client.setblocking(False)
        server = self.accepted(relay)
        [pair] = relay.pairs
        sent = 0
        for _ in range(400):
            try:
                sent += client.send(b"x" * READ_SIZE)
            except BlockingIOError:
                relay.step(self.stopRead, 10)
        state = pair.directions[UPSTREAM]
        held = state.count
        for _ in range(5):
            relay.step(self.stopRead, 10)
        self.assertEqual(state.count, held)
        self.assertGreater(sent, held)
        server.setblocking(False)
        received = 0
        deadline = time.monotonic() + 10
        while received < sent:
            self.assertLess(time.monotonic(), deadline, "the bytes did not all arrive")
            relay.step(self.stopRead, 10)
            try:
                received += len(server.recv(1 << 20))
            except BlockingIOError:
                pass
        self.assertEqual((received, state.count), (sent, sent))

    def test_proxyHeaderFirst(self) -> None:
        """
        With C{--proxy-protocol}, the header goes to the target before the
        client's bytes, built from the same addresses as the proxy's.
        """
        relay = self.relay(target="tcp", proxyProtocol="v1")
        client = self.client()
        client.sendall(b"GET /")
        server = self.accepted(relay)
        [pair] = relay.pairs
        self.runUntil(relay, lambda: pair.directions[UPSTREAM].count == 5)
        host, port = client.getsockname()
        listenHost, listenPort = self.listenAddress
        header = headerV1(
            IPv4Address("TCP", host, port), IPv4Address("TCP", listenHost, listenPort)
        )
        expected = header + b"GET /"
        received = b""
        while len(received) < len(expected):
            received += server.recv(100)
        self.assertEqual(received, expected)

    def test_stopsWhenLoaded(self) -> None:
        """
        L{EarlyRelay.serve} returns the pairs once its stop descriptor is
        readable.
        """
        relay = self.relay()
        self.client()
        self.accepted(relay)
        os.write(self.stopWrite, b"x")
        self.assertEqual(len(relay.serve(self.stopRead)), 1)

    def test_failureHandsOverAsFailed(self) -> None:
        """
        An error that ends the relay's thread is not raised at the
        hand-over: it is recorded, and a pair the relay was serving is
        handed over as failed (its Connection resets it); one it had
        finished is not; the switch interval is restored.
        """

        class FailingRelay(EarlyRelay):
            def serve(self, stop: int) -> list[EarlyPair]:
                raise RuntimeError("poll broke")

        handlers = {signum: signal.getsignal(signum) for signum in earlyrelay._SIGNALS}
        for signum, handler in handlers.items():
            self.addCleanup(signal.signal, signum, handler)
        interval = sys.getswitchinterval()
        relay = self.relay()
        failing = FailingRelay(relay.plan, relay.listeners)
        done = self.client()
        server = self.accepted(failing)
        done.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)
        [finished] = failing.pairs
        self.runUntil(failing, finished.finished)
        self.client()
        self.accepted(failing)
        handover = earlyrelay.Handover([], time.time())
        handover.begin(failing)
        handover.finish()
        self.assertEqual(handover.failure, "RuntimeError: poll broke")
        self.assertEqual([pair.failed for pair in handover.pairs], [False, True])
        self.assertEqual(handover.reset, 1)
        self.assertEqual(sys.getswitchinterval(), interval)


def earlyPair(
    client: socket.socket,
    target: socket.socket | None,
    counts: tuple[int, int] = (0, 0),
    backlogs: tuple[bytes, bytes] = (b"", b""),
    ended: tuple[bool, bool] = (False, False),
    failed: bool = False,
    accepted: float = 0.0,
    lastMoved: float = 0.0,
) -> EarlyPair:
    """
    A pair as the early relay would hand it over.
    """
    pair = EarlyPair("unknown", client, "", accepted)
    pair.target = target
    pair.connected = accepted
    pair.lastMoved = lastMoved
    pair.failed = failed
    for state, count, backlog, end in zip(pair.directions, counts, backlogs, ended, strict=True):
        state.count, state.backlog, state.ended, state.shut = count, backlog, end, end
    return pair


class HandOverTests(ConnectionTestCase):
    """
    A Connection adopting an early pair goes on from where the relay was,
    on the splice pump, and from then on behaves as any other.
    """

    def adopt(self, settings: ProxySettings | None = None, **state: object) -> SpliceHarness:
        def early(client: socket.socket, target: socket.socket) -> EarlyPair:
            connected = None if state.pop("unconnected", False) else target
            return earlyPair(client, connected, **state)  # type: ignore[arg-type]

        return SpliceHarness(settings or ProxySettings(), self.tracker, self, False, early)

    def test_countsAndUnsentBytesCarriedOver(self) -> None:
        """
        Bytes moved before count; bytes read and not yet sent go first, in
        order, each way; then bytes flow as on any connection.
        """
        harness = self.adopt(counts=(10, 20), backlogs=(b"unsent-up ", b"unsent-down "))
        self.assertEqual(harness.targetReceived(), b"unsent-up ")
        self.assertEqual(harness.clientReceived(), b"unsent-down ")
        harness.clientSends(b"next")
        harness.targetSends(b"reply")
        self.assertEqual(harness.targetReceived(), b"unsent-up next")
        self.assertEqual(harness.clientReceived(), b"unsent-down reply")
        self.assertEqual(harness.connection.counts, [14, 25])
        self.assertEqual(len(self.tracker.opens), 1)

    def test_endedDirectionCarriedOver(self) -> None:
        """
        A direction whose source ended before is finished (its unsent bytes
        out, then the end of stream) and not read again; the other goes on,
        and the connection ends normally once it ends too.
        """
        harness = self.adopt(backlogs=(b"last", b""), ended=(True, False))
        self.assertEqual(harness.targetReceived(), b"last")
        self.assertEqual(harness.targetSees(), "eof")
        self.assertEqual(harness.connection.flows[UPSTREAM], Flow.SHUT)
        harness.targetSends(b"answer")
        self.assertEqual(harness.clientReceived(), b"answer")
        harness.targetEof()
        self.assertEqual(harness.clientSees(), "eof")
        [closed] = self.tracker.closes
        self.assertIs(closed.ending, Ending.DONE)

    def test_bothEndedCloses(self) -> None:
        """
        A pair both of whose directions ended before closes at once, done.
        """
        harness = self.adopt(counts=(3, 4), ended=(True, True))
        [closed] = self.tracker.closes
        self.assertEqual((closed.ending, closed.counts), (Ending.DONE, [3, 4]))
        self.assertEqual(harness.clientSees(), "eof")

    def test_failedResetsBoth(self) -> None:
        """
        A pair in which a socket failed before is reset on both sides.
        """
        harness = self.adopt(counts=(1, 0), failed=True)
        [closed] = self.tracker.closes
        self.assertIs(closed.ending, Ending.RESET)
        self.assertEqual((harness.clientSees(), harness.targetSees()), ("reset", "reset"))

    def test_unconnectedConnectsNow(self) -> None:
        """
        A pair without a target is connected as any accepted client, and
        counted from when the relay accepted it.
        """
        now = time.time()
        settings = ProxySettings(timesConnections=True)
        harness = self.adopt(settings, unconnected=True, accepted=now - 0.25)
        self.assertEqual(harness.connector.attempts, 1)
        self.assertEqual(harness.connection.started, now - 0.25)
        harness.clientSends(b"hello")
        self.assertEqual(harness.targetReceived(), b"hello")

    def test_connectedTimesKept(self) -> None:
        """
        With times recorded, the connection counts from the relay's accept
        and connect.
        """
        harness = self.adopt(ProxySettings(timesConnections=True), accepted=123.0)
        self.assertEqual((harness.connection.started, harness.connection.connected), (123, 123))
        self.assertEqual(harness.connector.attempts, 0)

    def test_idleTimeoutCountsFromTheLastByte(self) -> None:
        """
        The idle timeout runs from the last byte the relay moved, not from
        the hand-over.
        """
        settings = ProxySettings(idleTimeout=10.0)
        harness = self.adopt(settings, lastMoved=-8.0)
        harness.advance(1.9)
        self.assertEqual(self.tracker.closes, [])
        harness.advance(0.2)
        [closed] = self.tracker.closes
        self.assertIs(closed.ending, Ending.IDLE_TIMEOUT)
