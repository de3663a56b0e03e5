"""
Activation under a real systemd: how long the first client of a
socket-activated service waits, for the C original and for socketproxyd's
console script, C{python -m socketproxyd} (both on a TCP and on a UNIX-socket
target), the console script with C{--proxy-protocol=v2}, and the twistd and
twist forms, installed as the README says in the throw-away container of the
end-to-end tests.

Inside the container, for each form and each round: stop the service (its
socket keeps listening), let systemd finish its work on the stop (200 ms:
right after it, systemd answered a new client up to 20 ms late, more so
after a slower stop), then time from C{connect()} to the first byte of the
backend's greeting through the freshly started proxy.  Median and spread
of C{--count} rounds, all forms in the same run, and for scale the time of
C{python -c pass}, C{python -c "import socketproxyd.cli"} (what the early
relay imports) and C{python -c "from twisted.internet import reactor"} with
the installed Python.  Needs root (see
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
TCP, UNIX = "127.0.0.1:8000", "/run/greeter.sock"
FORMS = {
    "original": (f"{ORIGINAL} {TCP}", "simple"),
    "original, UNIX": (f"{ORIGINAL} {UNIX}", "simple"),
    "console script": (f"{PREFIX}/bin/socketproxyd {TCP}", "notify"),
    "console, UNIX": (f"{PREFIX}/bin/socketproxyd {UNIX}", "notify"),
    "python -m": (f"{PREFIX}/bin/python -m socketproxyd {TCP}", "notify"),
    "python -m, UNIX": (f"{PREFIX}/bin/python -m socketproxyd {UNIX}", "notify"),
    "PROXY header": (f"{PREFIX}/bin/socketproxyd --proxy-protocol=v2 {TCP}", "notify"),
    "twistd": (f"{PREFIX}/bin/twistd --nodaemon --pidfile= socketproxy {TCP}", "notify"),
    "twist": (f"{PREFIX}/bin/twist socketproxy {TCP}", "notify"),
}
# Greets every client on TCP and on a UNIX socket, then reads to the end (so that a PROXY
# header it does not read never makes its close a reset).
GREETER = """\
import os, socket, threading
def greet(conn):
    with conn:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
def serve(server):
    while True:
        conn, _ = server.accept()
        threading.Thread(target=greet, args=(conn,), daemon=True).start()
unix = socket.socket(socket.AF_UNIX)
if os.path.exists("/run/greeter.sock"):
    os.unlink("/run/greeter.sock")
unix.bind("/run/greeter.sock")
unix.listen(128)
threading.Thread(target=serve, args=(unix,), daemon=True).start()
serve(socket.create_server(("127.0.0.1", 8000), backlog=128))
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
        time.sleep(0.2)
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                first = sock.recv(1)
        except OSError as e:
            first = repr(e)
        elapsed = time.perf_counter() - started
        results[unit].append(elapsed * 1000 if first == b"h" else str(first))
for name, code in (("python -c pass", "pass"),
                   ("relay import", "import socketproxyd.cli"),
                   ("reactor import", "from twisted.internet import reactor")):
    results[name] = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run([sys.argv[3], "-c", code], check=True)
        results[name].append((time.perf_counter() - started) * 1000)
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
    originals = {label: key for key, label in labels.items() if label.startswith("original")}
    print(f"first byte under systemd, ms (median of {count}; min-max; failed rounds)")
    for key, label in labels.items():
        failed = [t for t in results[key] if not isinstance(t, float)]
        spread = f"({min(times[key]):.1f}-{max(times[key]):.1f})" if times[key] else ""
        base = originals.get("original, UNIX" if label.endswith("UNIX") else "original")
        ratio = f"{medians[key] / medians[base]:5.1f}x original" if base else ""
        failures = f"{len(failed)} failed {failed[:2]}" if failed else ""
        print(f"{label:16} {medians[key]:7.1f}  {spread:15} {ratio}  {failures}")


def main() -> None:
    """
    Boot, install, measure, print one line per form.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    if not os.access(ORIGINAL, os.X_OK):
        del FORMS["original"], FORMS["original, UNIX"]
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
    scale = {name: name for name in ("python -c pass", "relay import", "reactor import")}
    report(json.loads(measured.stdout), {**labels, **scale}, args.count)


if __name__ == "__main__":
    main()
