"""The configuration table of the docs, generated from :class:`ServiceSettings` so it cannot drift.

``python -m service.settings_table --write README.md`` (``make docs``) replaces the block between
``<!-- settings:start -->`` and ``<!-- settings:end -->``; a test checks the README is current.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pydantic import SecretStr

from service.settings import ServiceSettings

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"


def _default(name: str) -> str:
    field = ServiceSettings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        return "(empty: required)"
    if isinstance(value, list):
        return ",".join(value) or "(none)"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value}`"


def table() -> str:
    """One row per setting: environment variable, default, what it does."""
    lines = ["| environment variable | default | what it does |", "|---|---|---|"]
    for name, field in ServiceSettings.model_fields.items():
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| `LOOKASIDE_{name.upper()}` | {_default(name)} | {doc} |")
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    """Replace the block between the markers in ``path``."""
    content = path.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{path} has no {START} ... {END} block")
    path.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="replace the marked block in this file")
    args = parser.parse_args()
    if args.write:
        write(args.write, table())
    else:
        print(table())  # noqa: T201


if __name__ == "__main__":
    main()
