"""
The option texts of README.rst and man/socketproxyd.8, rendered from
L{socketproxyd.config.optiontext}: L{stale} says which file differs from
what the texts render, and

    python -m tests.support.optiondocs

writes the rendered texts into both.
"""

from __future__ import annotations

from pathlib import Path

from socketproxyd.config.optiontext import manOptions, readmeList

ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.rst"
MANUAL = ROOT / "man" / "socketproxyd.8"

README_BEGIN = ".. Begin of the options, rendered from socketproxyd/config/optiontext.py.\n"
README_END = ".. End of the options.\n"
MANUAL_BEGIN = '.\\" Begin of the options, rendered from socketproxyd/config/optiontext.py.\n'
MANUAL_END = '.\\" End of the options.\n'


def _replaced(text: str, begin: str, end: str, rendered: str) -> str:
    """
    C{text} with what lies between its markers C{begin} and C{end}
    replaced by C{rendered}.
    """
    start = text.index(begin) + len(begin)
    return text[:start] + rendered + text[text.index(end, start) :]


def rendered() -> dict[Path, str]:
    """
    README.rst and the manual page as they should read, their option
    texts rendered.
    """
    return {
        README: _replaced(README.read_text(), README_BEGIN, README_END, f"\n{readmeList()}\n"),
        MANUAL: _replaced(MANUAL.read_text(), MANUAL_BEGIN, MANUAL_END, manOptions()),
    }


def stale() -> list[Path]:
    """
    The files whose option texts differ from the rendered ones.
    """
    return [path for path, text in rendered().items() if path.read_text() != text]


if __name__ == "__main__":
    for path, text in rendered().items():
        path.write_text(text)
