"""
The unit files of examples/systemd/ as README.rst and man/socketproxyd.8
quote them: a quote is the line C{# examples/systemd/NAME} in a literal
block (README) or a C{.nf} block (manual page), followed by NAME's text
without its leading comment lines. L{stale} says which files quote a unit
otherwise than it reads, and

    python -m tests.support.unitquotes

writes every quote anew from its unit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "examples" / "systemd"
README = ROOT / "README.rst"
MANUAL = ROOT / "man" / "socketproxyd.8"

_HEADING = re.compile(r"^# examples/systemd/(\S+)$")


@dataclass(frozen=True)
class Quote:
    """
    One unit quoted in a document: the unit's name, and the lines of the
    document (from C{start} to before C{end}) that quote its text.
    """

    unit: str
    start: int
    end: int


def unitText(name: str) -> str:
    """
    The text a quote of unit C{name} shows: the file without its leading
    comment lines.
    """
    lines = (UNITS / name).read_text().splitlines()
    while lines and lines[0].startswith(("#", ";")):
        lines.pop(0)
    return "\n".join(lines).strip("\n")


def _roffUnescaped(line: str) -> str:
    return line.replace("\\-", "-").replace("\\e", "\\")


def _roffEscaped(line: str) -> str:
    return line.replace("\\", "\\e").replace("-", "\\-")


def readmeQuotes(lines: list[str]) -> Iterator[Quote]:
    """
    The quotes in README.rst's C{lines}: each runs to the end of its
    literal block (four spaces in) or to the next quote.
    """
    for i, line in enumerate(lines):
        found = _HEADING.match(line[4:]) if line.startswith("    ") else None
        if found is None:
            continue
        end = i + 1
        while end < len(lines) and (lines[end].startswith("    ") or not lines[end]):
            if _HEADING.match(lines[end][4:]):
                break
            end += 1
        while not lines[end - 1]:
            end -= 1
        yield Quote(found.group(1), i + 1, end)


def manualQuotes(lines: list[str]) -> Iterator[Quote]:
    """
    The quotes in the manual page's C{lines}: each runs to the end of its
    C{.nf} block or to the next quote.
    """
    for i, line in enumerate(lines):
        found = _HEADING.match(_roffUnescaped(line))
        if found is None:
            continue
        end = i + 1
        while end < len(lines) and lines[end] != ".fi":
            if _HEADING.match(_roffUnescaped(lines[end])):
                break
            end += 1
        while not lines[end - 1]:
            end -= 1
        yield Quote(found.group(1), i + 1, end)


def quoted(path: Path) -> list[tuple[Quote, str]]:
    """
    Every quote in C{path} (README.rst or the manual page), with the unit
    text it shows.
    """
    lines = path.read_text().splitlines()
    if path == README:
        return [
            (quote, "\n".join(line[4:] for line in lines[quote.start : quote.end]))
            for quote in readmeQuotes(lines)
        ]
    return [
        (quote, "\n".join(map(_roffUnescaped, lines[quote.start : quote.end])))
        for quote in manualQuotes(lines)
    ]


def rendered(path: Path) -> str:
    """
    C{path} with every quote written anew from its unit.
    """
    lines = path.read_text().splitlines()
    quotes = list(readmeQuotes(lines) if path == README else manualQuotes(lines))
    for quote in reversed(quotes):
        text = unitText(quote.unit).splitlines()
        if path == README:
            text = [f"    {line}" if line else "" for line in text]
        else:
            text = [_roffEscaped(line) for line in text]
        lines[quote.start : quote.end] = text
    return "\n".join(lines) + "\n"


def stale() -> list[Path]:
    """
    The documents that quote a unit otherwise than it reads.
    """
    return [path for path in (README, MANUAL) if path.read_text() != rendered(path)]


if __name__ == "__main__":
    for document in (README, MANUAL):
        document.write_text(rendered(document))
