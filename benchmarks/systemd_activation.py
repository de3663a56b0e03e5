"""
Activation under a real systemd: how long the first client of a
socket-activated service waits, for the C original and for socketproxyd's
console script, twistd and twist forms, installed as the README says in the
throw-away container of the end-to-end tests.

Inside the container, for each form and each round: stop the service (its
socket keeps listening), then time from C{connect()} to the first byte of
the backend's greeting through the freshly started proxy.  Median and spread
of C{--count} rounds, all forms in the same run, and for scale the time of
C{python -c "from twisted.internet import reactor"} with the installed Python.  Needs root (see
tests/systemd/container.py).

    python benchmarks/systemd_activation.py [--count N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.systemd.container import Container, ContainerUnavailable, ensureNspawn  # noqa: E402
from tests.systemd.installkit import PREFIX, KitUnavailable, buildKit, installScript  # noqa: E402

ORIGINAL = "/lib/systemd/systemd-socket-proxyd"
KIT = "/srv/spx-install"
FORMS = {
    "original": (f"{ORIGINAL} 127.0.0.1:8000", "simple"),
    "console script": (f"{PREFIX}/bin/socketproxyd 127.0.0.1:8000", "notify"),
    "twistd": (f"{PREFIX}/bin/twistd --nodaemon --pidfile= socketproxy 127.0.0.1:8000", "notify"),
    "twist": (f"{PREFIX}/bin/twist socketproxy 127.0.0.1:8000", "notify"),
}
GREETER = """\
import socket
server = socket.create_server(("127.0.0.1", 8000), backlog=128)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"hello")
"""
# Runs inside the container: argv[1] is JSON {unit: port}, argv[2] the count, argv[3] the
# installed Python, whose bare reactor import is timed too, for scale.
MEASURE = """\
import json, socket, subprocess, sys, time
units, count = json.loads(sys.argv[1]), int(sys.argv[2])
results = {unit: [] for unit in units}
for _ in range(500):
    try:
        socket.create_connection(("127.0.0.1", 8000)).close()
        break
    except OSError:
        time.sleep(0.01)
for _ in range(count):
    for unit, port in units.items():
        subprocess.run(["systemctl", "stop", unit + ".service"], check=True, capture_output=True)
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                first = sock.recv(1)
        except OSError as e:
            first = repr(e)
        elapsed = time.perf_counter() - started
        results[unit].append(elapsed * 1000 if first == b"h" else str(first))
results["reactor import"] = []
for _ in range(count):
    started = time.perf_counter()
    subprocess.run([sys.argv[3], "-c", "from twisted.internet import reactor"], check=True)
    results["reactor import"].append((time.perf_counter() - started) * 1000)
print(json.dumps(results))
"""


def units() -> dict[str, str]:
    """
    The greeter backend, and a socket/service pair per form.
    """
    files = {
        "srv/spx-bench/greeter.py": GREETER,
        "srv/spx-bench/measure.py": MEASURE,
        "etc/systemd/system/greeter.service": (
            "[Service]\nExecStart=/usr/bin/python3 /srv/spx-bench/greeter.py\n"
        ),
    }
    for index, (execStart, kind) in enumerate(FORMS.values()):
        name = f"etc/systemd/system/bench{index}"
        files[f"{name}.socket"] = f"[Socket]\nListenStream=127.0.0.1:{8100 + index}\n"
        files[f"{name}.service"] = (
            "[Unit]\nRequires=greeter.service\nAfter=greeter.service\nStartLimitIntervalSec=0\n\n"
            f"[Service]\nType={kind}\nExecStart={execStart}\n"
        )
    return files


def report(results: dict[str, list[float | str]], labels: dict[str, str], count: int) -> None:
    """
    One line per form: median and spread of the rounds that got the
    greeting, the ratio to the original, and the rounds that did not.
    """
    times = {key: [t for t in results[key] if isinstance(t, float)] for key in labels}
    medians = {key: statistics.median(ts) if ts else math.nan for key, ts in times.items()}
    base = medians.get("bench0") if "original" in labels.values() else None
    print(f"first byte under systemd, ms (median of {count}; min-max; failed rounds)")
    for key, label in labels.items():
        failed = [t for t in results[key] if not isinstance(t, float)]
        spread = f"({min(times[key]):.1f}-{max(times[key]):.1f})" if times[key] else ""
        ratio = f"{medians[key] / base:5.1f}x original" if base else ""
        failures = f"{len(failed)} failed {failed[:2]}" if failed else ""
        print(f"{label:15} {medians[key]:7.1f}  {spread:15} {ratio}  {failures}")


def main() -> None:
    """
    Boot, install, measure, print one line per form.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    if not os.access(ORIGINAL, os.X_OK):
        del FORMS["original"]
    labels = {f"bench{index}": form for index, form in enumerate(FORMS)}
    ports = {name: 8100 + index for index, name in enumerate(labels)}
    kit = Path(tempfile.mkdtemp(prefix="spx-kit-"))
    container = Container(units(), binds=[f"{kit}:{KIT}"])
    try:
        ensureNspawn()
        buildKit(kit)
        container.boot()
        installed = container.run(["sh", "-c", installScript(KIT)], timeout=300)
        if installed.returncode != 0:
            sys.exit(f"install failed: {installed.stderr[-2000:]}")
        sockets = [f"{name}.socket" for name in labels]
        started = container.run(["systemctl", "start", *sockets, "greeter.service"])
        if started.returncode != 0:
            sys.exit(f"systemctl start failed: {started.stderr.strip()}")
        measure = ["python3", "/srv/spx-bench/measure.py", json.dumps(ports), str(args.count)]
        measured = container.run([*measure, f"{PREFIX}/bin/python"], timeout=60 + args.count * 30)
        if measured.returncode != 0:
            sys.exit(f"measuring failed: {measured.stderr[-2000:]}")
    except (ContainerUnavailable, KitUnavailable) as e:
        sys.exit(f"systemd_activation: {str(e).splitlines()[0]}")
    finally:
        container.stop()
        shutil.rmtree(kit, ignore_errors=True)
    report(json.loads(measured.stdout), {**labels, "reactor import": "reactor import"}, args.count)


if __name__ == "__main__":
    main()
