"""
What README.rst and man/socketproxyd.8 take from elsewhere, written into
them and checked against them: every option's text, rendered from
L{socketproxyd.config.optiontext} between markers, and the units of
examples/systemd/, each quoted under a line C{# examples/systemd/NAME} in a
README literal block or a manual C{.nf} block (its text without its leading
comment lines).

    python -m tests.support.docs

writes both into both files; L{staleOptions} and L{staleQuotes} say which
file differs from what they should hold.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from socketproxyd.config.optiontext import LITERAL, OPTIONS

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "examples" / "systemd"
README = ROOT / "README.rst"
MANUAL = ROOT / "man" / "socketproxyd.8"

README_BEGIN = ".. Begin of the options, rendered from socketproxyd/config/optiontext.py.\n"
README_END = ".. End of the options.\n"
MANUAL_BEGIN = '.\\" Begin of the options, rendered from socketproxyd/config/optiontext.py.\n'
MANUAL_END = '.\\" End of the options.\n'

_HEADING = re.compile(r"^# examples/systemd/(\S+)$")


def roffEscaped(text: str) -> str:
    """
    C{text} in roff with every hyphen a minus sign, as options and unit
    lines are typed.
    """
    return text.replace("\\", "\\e").replace("-", "\\-")


def roffUnescaped(text: str) -> str:
    """
    C{text} as L{roffEscaped} had it.
    """
    return text.replace("\\-", "-").replace("\\e", "\\")


def readmeList() -> str:
    """
    The README's option list, as reStructuredText: a definition list of
    every option with its default, summary and details.
    """
    entries = []
    for option in OPTIONS:
        names = f"``-{option.short} {option.placeholder}``, " if option.short else ""
        default = f" (default: {option.default})" if option.default is not None else ""
        text = LITERAL.sub(r"``\1``", option.whole())
        entries.append(f"{names}``{option.spelling()}``{default}\n{_indented(text, 4)}\n")
    entries.append(
        "``-h``, ``--help``; ``--version``\n    Print the options, or the version, and exit 0.\n"
    )
    return "\n".join(entries)


def manOptions() -> str:
    """
    The manual page's OPTIONS, as roff: a tagged paragraph for every
    option.
    """
    entries = []
    for option in OPTIONS:
        tag = roffEscaped(option.spelling())
        if option.short:
            tag = f"{roffEscaped(f'-{option.short} {option.placeholder}')}, {tag}"
        text = option.whole()
        if option.default is not None:
            text += f" Default: {option.default}."
        entries.append(f'.TP\n.B "{tag}"\n{_roff(text)}')
    entries.append('.TP\n.B "\\-h, \\-\\-help"\nPrint the options and exit with status 0.')
    entries.append('.TP\n.B "\\-\\-version"\nPrint the version and exit with status 0.')
    return "\n".join(entries) + "\n"


def _indented(text: str, by: int) -> str:
    return textwrap.fill(
        text,
        width=99,
        initial_indent=" " * by,
        subsequent_indent=" " * by,
        break_long_words=False,
        break_on_hyphens=False,
    )


_WORD_DASH = re.compile(r"(?<![\w-])-+")


def _roff(text: str) -> str:
    """
    C{text} as roff: literals bold with their hyphens as minus signs, and
    the dashes that begin a word (C{-c}) likewise; hyphens within words
    stay hyphens.
    """
    parts = LITERAL.split(text)
    for i, part in enumerate(parts):
        if i % 2:
            parts[i] = f"\\fB{roffEscaped(part)}\\fR"
        else:
            parts[i] = _WORD_DASH.sub(lambda m: "\\-" * len(m.group()), part.replace("\\", "\\e"))
    return "".join(parts)


def _replaced(text: str, begin: str, end: str, rendered: str) -> str:
    """
    C{text} with what lies between its markers C{begin} and C{end}
    replaced by C{rendered}.
    """
    start = text.index(begin) + len(begin)
    return text[:start] + rendered + text[text.index(end, start) :]


def withOptions() -> dict[Path, str]:
    """
    README.rst and the manual page as they should read, their option
    texts rendered.
    """
    return {
        README: _replaced(README.read_text(), README_BEGIN, README_END, f"\n{readmeList()}\n"),
        MANUAL: _replaced(MANUAL.read_text(), MANUAL_BEGIN, MANUAL_END, manOptions()),
    }


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
        found = _HEADING.match(roffUnescaped(line))
        if found is None:
            continue
        end = i + 1
        while end < len(lines) and lines[end] != ".fi":
            if _HEADING.match(roffUnescaped(lines[end])):
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
        (quote, "\n".join(map(roffUnescaped, lines[quote.start : quote.end])))
        for quote in manualQuotes(lines)
    ]


def quotedAnew(path: Path) -> str:
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
            text = [roffEscaped(line) for line in text]
        lines[quote.start : quote.end] = text
    return "\n".join(lines) + "\n"


def staleOptions() -> list[Path]:
    """
    The files whose option texts differ from the rendered ones.
    """
    return [path for path, text in withOptions().items() if path.read_text() != text]


def staleQuotes() -> list[Path]:
    """
    The documents that quote a unit otherwise than it reads.
    """
    return [path for path in (README, MANUAL) if path.read_text() != quotedAnew(path)]


if __name__ == "__main__":
    for path, text in withOptions().items():
        path.write_text(text)
    for path in (README, MANUAL):
        path.write_text(quotedAnew(path))
