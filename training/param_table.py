"""The README's parameter table: every paper row's printed size beside ours, generated so it stays
true.

    python -m training.param_table            # print the markdown table
    python -m training.param_table --write README.md   # replace the table between the markers

Rows are :data:`training.paper_tables.TABLES`. Each is counted on its table's backbone shape
(random weights on the ``meta`` device: nothing is downloaded or allocated): the adapter's sites,
plus a head where the paper's count includes one (``head_classes``), plus what the paper counts
that Lookaside cannot train (``extra``). A row matches when that lies within the paper's rounding;
a row that does not says why (``gap``). Percentages are of our backbone shape's parameters.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from lookaside import docblock
from lookaside.adapters import ADAPTERS, HeadConfig
from lookaside.adapters.shapes import HEAD_PREFIX, expected_shapes, numel
from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig
from training.paper_tables import TABLES, PaperRow, PaperTable
from training.recipes import ROW_RECIPES

OWN_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("convpass", {"rank": 8}, "attn + ffn, Convpass's own rank"),
]
"""Methods no paper table sizes, with the configuration ``methods`` shows for them."""


def paper_configs() -> list[tuple[str, dict[str, Any], str]]:
    """(method, config, note): each distinct method config of the paper tables, noted by its
    first row (``table: row``), then :data:`OWN_CONFIGS`; grouped by method in ADAPTERS order."""
    seen: dict[tuple[str, str], tuple[str, dict[str, Any], str]] = {}
    for t in TABLES.values():
        for row in t.rows:
            if row.method is not None:
                key = (row.method, json.dumps(row.config, sort_keys=True))
                seen.setdefault(key, (row.method, row.config, f"{t.name}: {row.row}"))
    configs = [*seen.values(), *OWN_CONFIGS]
    order = list(ADAPTERS)
    return sorted(configs, key=lambda c: order.index(c[0]))  # stable: table order per method


PAPER_CONFIGS = paper_configs()
"""One configuration per method config the papers train (``lookaside-train methods`` lists
these)."""


@dataclass(frozen=True)
class RowCount:
    """Our count of one paper row."""

    params: int
    """Adapter sites (+ head where the paper counts one); what ``percent`` is of the backbone."""
    percent: float
    """``params`` as a share of the backbone shape's parameters."""
    matches: bool
    """Within the paper's rounding (with ``extra`` added)."""
    backbone_params: int
    """The backbone shape's parameters."""


@functools.cache
def backbone_params(cfg: BackboneConfig) -> int:
    """Parameter count of a backbone of this shape (built on ``meta``: nothing is allocated;
    cached, as every row of a table counts on the same few shapes)."""
    with torch.device("meta"):
        return VisionTransformer(cfg).num_params


def count_row(table: PaperTable, row: PaperRow) -> RowCount | None:
    """Our count of ``row`` on its table's backbone shape (None for a row we cannot train)."""
    if row.method is None:
        return None
    cfg = row.backbone or table.backbone
    head = HeadConfig(num_classes=row.head_classes or 2)
    shapes = expected_shapes(cfg, row.method, row.config, head)
    params = sum(
        numel(s)
        for k, s in shapes.items()
        if not k.startswith((HEAD_PREFIX, "clip."))  # AV-PEA's temporal layer: not the paper's
    )
    if row.head_classes:
        params += sum(numel(s) for k, s in shapes.items() if k.startswith(HEAD_PREFIX))
    total = backbone_params(cfg)
    percent = 100 * params / total
    if row.params is not None:
        matches = abs(params + row.extra - row.params) <= row.half_unit
    else:
        assert row.percent is not None, f"{table.name} {row.key}: no size to compare"
        matches = abs(percent - row.percent) <= row.percent_half
    return RowCount(params, percent, matches, total)


def _size(n: int) -> str:
    return f"{n / 1e6:.3f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _cfg_text(config: dict[str, Any]) -> str:
    def value(v: object) -> str:
        return "+".join(map(str, v)) if isinstance(v, list | tuple) else str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in config.items()) or "-"


def table_rows(table: PaperTable, notes: dict[str, int]) -> list[list[str]]:
    """One line per row: row, recipes, config, paper's size, ours, ours %, and the verdict (a
    reason shared by several rows is numbered in ``notes``, text -> number)."""
    out = []
    for row in table.rows:
        key = (table.name, row.key)
        recipes = sorted({v for (t, k, _), v in ROW_RECIPES.items() if (t, k) == key})
        count = count_row(table, row)
        if count is None:
            note = notes.setdefault(str(row.skip), len(notes) + 1)
            out.append([row.row, "-", "-", row.printed, "-", "-", f"skipped ({note})"])
            continue
        extra = f" + {_size(row.extra)} (paper's extra)" if row.extra else ""
        verdict = (
            "matches"
            if count.matches
            else f"differs ({notes.setdefault(str(row.gap), len(notes) + 1)})"
        )
        out.append(
            [
                row.row,
                " ".join(f"`{r}`" for r in recipes),
                _cfg_text(row.config),
                row.printed,
                _size(count.params) + extra,
                f"{count.percent:.2f} %",
                verdict,
            ]
        )
    return out


def table() -> str:
    """Markdown: per paper table, each row's printed size beside our count."""
    lines = [
        "Counted on each table's backbone shape with random weights; `ours` adds a head where "
        "the paper's count has one. Sources, derivations and settings: `training/paper_tables.py` "
        "and `docs/reproduce.md`."
    ]
    for t in TABLES.values():
        notes: dict[str, int] = {}
        lines += [
            "",
            f"**{t.name}**: {t.paper}; backbone shape `{t.backbone.name}` "
            f"({backbone_params(t.backbone) / 1e6:.2f}M)",
            "",
            "| row | recipe | config | paper | ours | ours % | |",
            "|---|---|---|---:|---:|---:|---|",
        ]
        for cells in table_rows(t, notes):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if notes:
            lines += [""] + [f"- ({n}) {text}" for text, n in notes.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    docblock.main("params", table, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    main()
