"""What the ``lookaside-train`` commands share: output, tables, and their settings merged from
``--recipe`` < ``--config`` < the command line."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from training.args import TrainArgs, build_args, load_yaml
from training.recipes import get_recipe

__all__ = ["say", "format_table", "train_args_of"]


def say(text: str = "") -> None:
    """Command output (stdout; progress bars and logs go to stderr)."""
    sys.stdout.write(text + "\n")


def train_args_of(ns: argparse.Namespace, **fixed: Any) -> TrainArgs:
    """The TrainArgs of ``train`` / ``crossval``: their namespace less what is not a setting."""
    given = {k: v for k, v in vars(ns).items() if k not in {"command", "recipe", "config", "folds"}}
    layers: list[dict[str, Any]] = []
    if getattr(ns, "recipe", None):
        layers.append({**get_recipe(ns.recipe).settings, "recipe": ns.recipe})
    if getattr(ns, "config", None):
        layers.append(load_yaml(ns.config))
    layers += [given, fixed]
    return build_args(layers)


def format_table(
    rows: Sequence[Sequence[str]], header: Sequence[str], wrap: dict[int, int] | None = None
) -> str:
    """Aligned columns; a column in ``wrap`` (index -> width) wraps at word boundaries."""
    wrap = wrap or {}
    cells = [
        [
            textwrap.wrap(str(c), wrap[i], break_on_hyphens=False) or [""]
            if i in wrap
            else [str(c)]
            for i, c in enumerate(r)
        ]
        for r in [header, *rows]
    ]
    cells = [[[line.replace("\u00a0", " ") for line in c] for c in r] for r in cells]
    widths = [max(len(line) for r in cells for line in r[i]) for i in range(len(header))]
    out: list[str] = []
    for n, row in enumerate(cells):
        for k in range(max(len(c) for c in row)):
            parts = [
                (c[k] if k < len(c) else "").ljust(w) for c, w in zip(row, widths, strict=True)
            ]
            out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
