"""
Datagram listeners bound to a wildcard address (C{ListenDatagram=53}):
replies leave from the address each client wrote to, and the PROXY header
names it. Run in a network namespace of the test's own (root), where the
wildcard covers C{lo} only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import struct
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socketproxyd.proxyheader import V2_SIGNATURE
from tests.support.processes import commands

TIMEOUT = 60.0


# Runs in a fresh network namespace: lo up, a veth with 10.5.0.1/24, an echo
# backend that says which source port it saw, the proxy on a wildcard IPv4
# socket with timestamps on (fd 3, as Timestamping= would) and a wildcard
# dual-stack IPv6 one (fd 4); then clients write to several addresses, one
# of them three datagrams from one socket, and a broadcast. Prints, per
# datagram, where it was sent, where the reply came from and the reply.
NAMESPACE_SCRIPT = r"""
import ctypes, json, os, signal, socket, subprocess, sys, threading

subprocess.run(
    "ip link set lo up && ip link add spx0 type veth peer name spx1 && "
    "ip addr add 10.5.0.1/24 broadcast 10.5.0.255 dev spx0 && "
    "ip link set spx1 up && ip link set spx0 up",
    shell=True, check=True,
)
v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
v4.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMP", 29), 1)
v4.bind(("0.0.0.0", 0))
v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
v6.bind(("::", 0))
ports = [v4.getsockname()[1], v6.getsockname()[1]]
copies = [os.dup(v4.fileno()), os.dup(v6.fileno())]
for fd, copy in ((3, copies[0]), (4, copies[1])):
    os.dup2(copy, fd)
backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
backend.bind(("127.0.0.1", 0))

def echo():
    while True:
        data, peer = backend.recvfrom(65536)
        backend.sendto(b"R%d:" % peer[1] + data, peer)

threading.Thread(target=echo, daemon=True).start()
command = json.loads(sys.argv[1])
target = "127.0.0.1:%d" % backend.getsockname()[1]
env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="v4:v6")
dieWithParent = lambda: ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
proxy = subprocess.Popen(
    ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *command, target],
    pass_fds=(3, 4), env=env, stderr=subprocess.PIPE, preexec_fn=dieWithParent,
)
results = []
try:
    plan = [(ports[0], "127.0.0.2", 3), (ports[0], "127.0.0.1", 1), (ports[0], "10.5.0.255", 1),
            (ports[1], "::1", 1), (ports[1], "127.0.0.3", 1), (ports[1], "10.5.0.255", 1)]
    for port, destination, count in plan:
        family = socket.AF_INET6 if ":" in destination else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            client.settimeout(5)
            for _ in range(count):
                client.sendto(b"hi", (destination, port))
                try:
                    data, source = client.recvfrom(200)
                except TimeoutError:
                    data, source = b"", ("", 0)
                results.append([destination, port, source[0], source[1], data.hex()])
finally:
    proxy.terminate()
    _, errors = proxy.communicate(timeout=10)
print(json.dumps({"results": results, "status": proxy.returncode, "stderr": errors.decode()}))
"""


class WildcardTests(SynchronousTestCase):
    """
    A client writing to any address of a wildcard-bound datagram listener
    gets its reply from that address (from the local address for a
    broadcast), on IPv4 and on a dual-stack IPv6 socket (an IPv4 client
    seen as mapped), with the PROXY v2 header naming it as the
    destination; datagrams from one client to one address share a session
    even with other control messages (timestamps) beside the destination.
    """

    def test_repliesFromTheAddressWrittenTo(self) -> None:
        if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
            raise SkipTest("needs root, unshare and ip for a network namespace of its own")
        command = [*commands()["python -m"], "--proxy-protocol=v2", "--log-level=debug"]
        done = subprocess.run(
            ["unshare", "--net", sys.executable, "-c", NAMESPACE_SCRIPT, json.dumps(command)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        self.assertEqual(report["status"], 0, report["stderr"])
        results = report["results"]
        self.assertEqual(len(results), 8, report)
        backendPorts = []
        for destination, port, source, sourcePort, reply in results:
            expected = "10.5.0.1" if destination == "10.5.0.255" else destination
            self.assertEqual((source, sourcePort), (expected, port), report)
            data = bytes.fromhex(reply)
            seen, _, data = data.partition(b":")
            backendPorts.append(seen)
            self.assertTrue(data.startswith(V2_SIGNATURE), data)
            body = data[len(V2_SIGNATURE) + 4 :]
            packed = ipaddress.ip_address(destination).packed
            self.assertEqual(body[16:32] if ":" in destination else body[4:8], packed, report)
            self.assertEqual(struct.unpack("!H", body[-4:-2])[0], port)
            self.assertTrue(data.endswith(b"hi"))
        self.assertEqual(len(set(backendPorts[:3])), 1, "one client, one address: one session")
        self.assertEqual(len(set(backendPorts)), 6, "one session per client and address")
        closes = [line for line in report["stderr"].splitlines() if "datagrams (" in line]
        self.assertEqual(len(closes), 6, report["stderr"])
        self.assertTrue(any(f"127.0.0.2:{results[0][1]} " in line for line in closes), closes)
