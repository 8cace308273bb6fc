"""What ``lookaside-serve --help`` and ``lookaside-train --help`` share: help text for users.

Option help is generated from attribute docstrings written for Sphinx; :func:`plain` turns their
markup into plain text once, for both CLIs. :class:`HelpFormatter` keeps hand-wrapped
descriptions and examples as written and shows each option's default; :func:`validation_lines`
turns a pydantic error into one ``name: message`` line per problem instead of pydantic's dump.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import Any

from pydantic import ValidationError

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc|ref|doc|py:\w+):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_EMPHASIS = re.compile(r"(?<![\w*])\*\*?([^*\s][^*]*?)\*\*?(?![\w*])")


def _role_target(match: re.Match[str]) -> str:
    """``:class:`~a.b.C``` -> ``C``; ``:func:`a.b.f``` -> ``a.b.f``; ``:ref:`text <x>``` -> text."""
    target = match.group(1).split(" <")[0]
    return target.rsplit(".", 1)[-1] if match.group(0).split("`", 1)[1].startswith("~") else target


def plain(text: str) -> str:
    """``text`` without Sphinx / reST markup (roles, double backquotes, emphasis)."""
    text = _ROLE.sub(_role_target, text)
    text = _LITERAL.sub(r"\1", text)
    return _EMPHASIS.sub(r"\1", text)


def with_default(help_text: str, default: Any, env: str | None = None) -> str:
    """``help_text`` (plain, ``%`` escaped for argparse) ending with its default and variable."""
    text = plain(help_text).replace("%", "%%")
    notes = []
    if default is not None and default != "" and default != []:
        notes.append(f"default: {_shown(default)}")
    if env:
        notes.append(f"env {env}")
    return f"{text} ({'; '.join(notes)})" if notes else text


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).replace("%", "%%")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs (examples) as written; each option's default shown once.

    Like :class:`argparse.ArgumentDefaultsHelpFormatter`, but without ``(default: None)``,
    ``(default: False)`` for a plain switch, or a second default where the help already says it.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrapped at spaces only: ``--token-file`` or ``file:<path>`` is never split."""
        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default:" in text
            or "%(default)" in text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
            or isinstance(action, argparse.BooleanOptionalAction)
        ):
            return text
        return f"{text} (default: {_shown(default)})"


def validation_lines(exc: ValidationError) -> list[str]:
    """One ``name: message`` line per problem (a model-level check: its message alone)."""
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in error["loc"])
        lines.append(f"{where}: {message}" if where else message)
    return lines
