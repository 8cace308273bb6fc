"""The configuration table of the docs, generated from :class:`ServiceSettings` so it cannot drift.

``python -m service.settings_table --write README.md`` (``make docs``) replaces the block between
``<!-- settings:start -->`` and ``<!-- settings:end -->``; a test checks the README is current.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from lookaside import docblock
from service.settings import ServiceSettings


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


def main(argv: list[str] | None = None) -> None:
    docblock.main("settings", table, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    main()
