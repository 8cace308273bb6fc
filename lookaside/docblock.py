"""Generated blocks of the docs: text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.

Tables that restate the code (settings, parameter counts, recipes) are generated from it and
written between these markers (``make docs``); a test per table compares the block with a fresh
rendering, so the docs cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of block ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _pattern(name: str) -> re.Pattern[str]:
    start, end = markers(name)
    return re.compile(re.escape(start) + r"\n?(.*?)\n?" + re.escape(end), re.S)


def read_block(path: Path, name: str) -> str:
    """The text of block ``name`` in ``path`` (SystemExit naming the file when it has none)."""
    found = _pattern(name).search(path.read_text())
    if found is None:
        start, end = markers(name)
        raise SystemExit(f"{path} has no {start} ... {end} block")
    return found.group(1)


def write_block(path: Path, name: str, text: str) -> None:
    """Replace the text of block ``name`` in ``path`` with ``text``."""
    read_block(path, name)  # the markers must be there
    start, end = markers(name)
    content = _pattern(name).sub(lambda _: f"{start}\n{text}\n{end}", path.read_text())
    path.write_text(content)


def main(
    name: str, render: Callable[[], str], description: str, argv: Sequence[str] | None = None
) -> None:
    """``python -m <module> [--write FILE]``: print the rendering, or write it into FILE."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", type=Path, help=f"replace the {name} block in this file")
    args = parser.parse_args(argv)
    if args.write:
        write_block(args.write, name, render())
    else:
        print(render())  # noqa: T201
