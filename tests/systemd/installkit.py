"""
Installing the project into a container that has no network, the way the
README says: its own C{python3 -m venv /opt/socketproxyd &&
/opt/socketproxyd/bin/pip install .} and its plugin-cache command, with
C{--no-index --find-links} pointing pip at wheels downloaded on the host
beforehand (the dependencies and the build requirements).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent.parent
PREFIX = "/opt/socketproxyd"
INSTALL = f"python3 -m venv {PREFIX} && {PREFIX}/bin/pip install ."
DOWNLOAD_TIMEOUT = 300.0
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", ".tox", "_trial_temp*", "tests.*", "build", "dist",
    "*.egg-info", "__pycache__", "dropin.cache", ".pytest_cache", ".ruff_cache", ".mypy_cache",
    "results",
)  # fmt: skip
CONTAINER_PATH = "/usr/local/bin:/usr/bin:/bin"


class KitUnavailable(Exception):
    """
    The wheels could not be downloaded here (no index, no cache); the
    message says why, for a test to skip with.
    """


def readmeCommands(readme: Path = SOURCE / "README.rst") -> tuple[str, str]:
    """
    The README's install command for C{/opt/socketproxyd} and its
    plugin-cache command, as the README spells them; L{ValueError} when
    either is missing, so the README and what is tested cannot drift apart.
    """
    text = readme.read_text()
    if INSTALL not in " ".join(text.split()):
        raise ValueError(f"README.rst no longer says {INSTALL!r}")
    cache = re.search(rf"^ +({re.escape(PREFIX)}/bin/python -c .*getPlugins.*)$", text, re.M)
    if cache is None:
        raise ValueError("README.rst no longer gives the plugin-cache command")
    return INSTALL, cache.group(1)


def literalBlocks(text: str) -> list[tuple[str, int, str]]:
    """
    Every literal block of the reStructuredText C{text} (what follows a
    paragraph ending in C{::}, indented): the title of the section it is
    in, how far it is indented (a block inside a list is indented more
    than one at the top), and its text without the indentation.
    """
    lines = text.splitlines()
    blocks, section = [], ""
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line and following and set(following) <= set("-=") and len(following) == len(line):
            section = line
        if not line.endswith("::"):
            continue
        start = i + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        if start == len(lines):
            continue
        indent = len(lines[start]) - len(lines[start].lstrip())
        if indent <= len(line) - len(line.lstrip()):
            continue
        end = start
        while end < len(lines) and (not lines[end].strip() or lines[end][:indent].isspace()):
            end += 1
        body = "\n".join(line[indent:] for line in lines[start:end]).strip("\n")
        blocks.append((section, indent, body + "\n"))
    return blocks


def deploySteps(readme: Path = SOURCE / "README.rst") -> list[str]:
    """
    The command blocks of the README's numbered "Deploy under systemd"
    steps (the literal blocks inside its list), in order, as the README
    spells them; L{ValueError} when the section has none.
    """
    steps = [
        block
        for section, indent, block in literalBlocks(readme.read_text())
        if section == "Deploy under systemd" and indent > 4
    ]
    if not steps:
        raise ValueError("README.rst no longer has the steps of 'Deploy under systemd'")
    return steps


def routesCommands(readme: Path = SOURCE / "README.rst") -> str:
    """
    The README's commands that deploy the two-route namespace example
    (the literal block of its Routes section that copies the units), as
    the README spells them; L{ValueError} when it is missing.
    """
    for section, _, block in literalBlocks(readme.read_text()):
        if section == "Routes" and "examples/systemd/routes-proxy.service /etc" in block:
            return block
    raise ValueError("README.rst no longer gives the commands that deploy the routes example")


def targetInterpreter(path: str = CONTAINER_PATH) -> list[str]:
    """
    The C{pip download} options that choose wheels for the C{python3} the
    container runs (the host's own, seen through the overlay), which need
    not be the interpreter running the tests.
    """
    python = shutil.which("python3", path=path)
    if python is None:
        raise KitUnavailable(f"no python3 on {path} to install with")
    code = "import sys; print(sys.implementation.name, *sys.version_info[:2])"
    try:
        name, major, minor = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        raise KitUnavailable(f"cannot tell which Python {python} is: {e}") from e
    if name != "cpython":
        raise KitUnavailable(f"{python} is {name}, not CPython")
    version = f"{major}.{minor}"
    return ["--python-version", version, "--implementation", "cp", "--abi", f"cp{major}{minor}"]


def buildKit(into: Path) -> None:
    """
    Write into C{into} what an offline install needs: C{src}, a copy of the
    source tree as a checkout has it, and C{wheels}, every wheel its
    install and its build need for the container's C{python3}, downloaded
    with the host's pip.
    """
    shutil.copytree(SOURCE, into / "src", ignore=_NOT_SOURCE, symlinks=True)
    requires = ["setuptools>=64", "wheel"]
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    argv += ["--timeout", "20", *targetInterpreter(), "--only-binary=:all:"]
    argv += ["--dest", str(into / "wheels"), str(into / "src"), *requires]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KitUnavailable(f"could not download the wheels to install from: {e}") from e
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise KitUnavailable(
            "could not download the wheels to install from: "
            + ("; ".join(errors) or f"pip exited {done.returncode}")
        )


def installScript(kit: str, scratch: str = "/var/tmp/spx-src") -> str:
    """
    The shell script that installs inside the container from C{kit} (where
    L{buildKit}'s output is mounted read-only): the README's commands, run
    in a writable copy of the source tree, pip kept off the network.
    """
    install, cache = readmeCommands()
    offline = install.replace(
        "pip install .", f"pip install --quiet --no-index --find-links={kit}/wheels ."
    )
    return "\n".join(
        ["set -e", f'rm -rf "{scratch}" "{PREFIX}"', f'cp -a "{kit}/src" "{scratch}"',
         f'cd "{scratch}"', offline, cache]
    )  # fmt: skip
