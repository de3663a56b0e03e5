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

from .helpers import commands

TIMEOUT = 30.0
# Runs in a fresh network namespace: lo up, an echo backend, the proxy on a
# wildcard IPv4 socket (fd 3) and a wildcard dual-stack IPv6 one (fd 4),
# then clients writing to several loopback addresses. Prints, per client
# datagram, where it was sent, where the reply came from and the reply.
NAMESPACE_SCRIPT = r"""
import json, os, socket, subprocess, sys, threading

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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
        backend.sendto(b"R:" + data, peer)

threading.Thread(target=echo, daemon=True).start()
command = json.loads(sys.argv[1])
target = "127.0.0.1:%d" % backend.getsockname()[1]
env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="v4:v6")
proxy = subprocess.Popen(
    ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *command, target],
    pass_fds=(3, 4), env=env, stderr=subprocess.PIPE,
)
results = []
for port, destinations in ((ports[0], ["127.0.0.2", "127.0.0.1"]),
                           (ports[1], ["::1", "127.0.0.3"])):
    for destination in destinations:
        family = socket.AF_INET6 if ":" in destination else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.settimeout(0.2)
            for _ in range(50):
                client.sendto(b"hi", (destination, port))
                try:
                    data, source = client.recvfrom(200)
                    break
                except TimeoutError:
                    continue
            else:
                data, source = b"", ("", 0)
            results.append([destination, port, source[0], source[1], data.hex()])
proxy.terminate()
_, errors = proxy.communicate(timeout=10)
print(json.dumps({"results": results, "status": proxy.returncode, "stderr": errors.decode()}))
"""


class WildcardTests(SynchronousTestCase):
    """
    A client writing to any address of a wildcard-bound datagram listener
    gets its reply from that address, on IPv4 and on a dual-stack IPv6
    socket (an IPv4 client seen as mapped), with the PROXY v2 header
    naming it as the destination.
    """

    def test_repliesFromTheAddressWrittenTo(self) -> None:
        if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
            raise SkipTest("needs root, unshare and ip for a network namespace of its own")
        command = [*commands()["python -m"], "--proxy-protocol=v2"]
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
        for destination, port, source, sourcePort, reply in report["results"]:
            self.assertEqual((source, sourcePort), (destination, port), report)
            data = bytes.fromhex(reply)
            self.assertTrue(data.startswith(b"R:" + V2_SIGNATURE), data)
            body = data[len(b"R:" + V2_SIGNATURE) + 4 :]
            if ":" in destination:
                self.assertEqual(body[16:32], ipaddress.ip_address(destination).packed)
            else:
                self.assertEqual(body[4:8], ipaddress.ip_address(destination).packed)
            self.assertEqual(struct.unpack("!H", body[-4:-2])[0], port)
            self.assertTrue(data.endswith(b"hi"))
        self.assertEqual(len(report["results"]), 4)
