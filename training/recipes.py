"""The papers' training settings as named presets (``--recipe NAME``), one per trainable row of
the tables in :mod:`training.paper_tables` and dataset Lookaside loads, at the row's size.

Each preset sets the dataset, method + config and the loop's hyper-parameters; anything also given
on the command line or in ``--config`` overrides it. Where a paper leaves a value out, the preset
says which source it comes from instead (mostly AST's recipe, which LoAA builds on).

Every preset names its paper's backbone explicitly (AST's DeiT initialisation for LoAA, AST on
AudioSet for Soft-MoA and AAT, ViT-B/16 or ViT-L/16 ImageNet-21K for AV-PEA), never the command
line's default (``lookaside.backbones.DEFAULT_BACKBONE``): a server must be started with that
backbone to serve what such a recipe trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lookaside.errors import ConfigError
from training.paper_tables import DATASET_LABELS, MOA_REFERENCE, TABLES, PaperRow, PaperTable

AST_BACKBONE = "timm:deit_base_distilled_patch16_384"
"""AST's ImageNet initialisation (the LoAA paper's image-pretrained backbone)."""
AV_BACKBONE = "timm:vit_base_patch16_224.augreg_in21k"
"""AV-PEA's backbone: ViT-B/16 supervised on ImageNet-21K, RGB patch kernel kept."""
AV_LARGE_BACKBONE = "timm:vit_large_patch16_224.augreg_in21k"
"""AV-PEA's ViT-L/16 (Table 1's second row), ImageNet-21K, RGB patch kernel kept."""
AST_AUDIOSET_BACKBONE = "hf:MIT/ast-finetuned-audioset-10-10-0.4593"
"""AST fine-tuned on AudioSet (the Soft-MoA paper's backbone). Its 10x10 overlapping patches
give no token grid; MoA does not need one."""


@dataclass(frozen=True)
class Recipe:
    """One paper setting."""

    name: str
    """``--recipe`` value."""
    doc: str
    """Paper, table and row it reproduces, and where unstated values come from."""
    settings: dict[str, Any] = field(default_factory=dict)
    """TrainArgs fields (and method-config fields) it sets."""


def _r(name: str, doc: str, **settings: Any) -> Recipe:
    return Recipe(name, doc, settings)


_ESC = {
    "dataset": "esc50",
    "epochs": 25,
    "batch_size": 48,
    "optimizer": "adam",
    "lr": 5e-4,
    "mixup": 0.0,
    "specaug": True,
    "freq_mask": 24,
    "time_mask": 96,
    "warmup_epochs": 1.0,
    "backbone": AST_BACKBONE,
}
_SPC = {
    "dataset": "speech_commands",
    "epochs": 30,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 2.5e-4,
    "mixup": 0.6,
    "specaug": True,
    "freq_mask": 48,
    "time_mask": 48,
    "warmup_epochs": 1.0,
    "backbone": AST_BACKBONE,
}
_EPIC = {
    "dataset": "epic_sounds",
    "epochs": 30,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 1e-4,
    "mixup": 0.0,
    "specaug": True,
    "freq_mask": 48,
    "time_mask": 192,
    "warmup_epochs": 1.0,
    "backbone": AST_BACKBONE,
}
_LOAA_SRC = {
    "esc50": "LoAA §3.2: Adam, lr 5e-4 (PEFT), 25 epochs, no mixup; batch size and SpecAugment "
    "widths are not given there: taken from AST's ESC-50 recipe",
    "speech_commands": "LoAA §3.2: Adam, lr 2.5e-4, 30 epochs, with mixup; the mixup alpha "
    "(0.6), batch size and SpecAugment widths are not given there: taken from AST's Speech "
    "Commands recipe",
    "epic_sounds": "LoAA §3.2: AdamW, lr 1e-4, 30 epochs, no mixup (SSAST's EPIC setup); batch "
    "size and SpecAugment widths are not given there: taken from AST's AudioSet recipe",
}
_MOA_SRC = (
    "Soft-MoA §3.1: AdamW, cosine schedule, weight decay 0.1; the paper defers the rest to [15]: "
    "lr {lr}, batch {batch_size}, {epochs} epochs, no warm-up and mean pooling come from its code "
    "({source}); SpecAugment widths and mixup are AST's"
)
_AAT_SRC = (
    "AAT Table 1 ({label}): batch {batch_size}, lr {lr}, {epochs} epochs; 'the same training "
    "pipeline as AST' (§3.1.4) gives the rest (Adam, SpecAugment, mixup) from AST's recipe; "
    "AST (SL) read as AST supervised on AudioSet"
)
_AVPEA_SRC = (
    "§4: frozen ViT pre-trained on ImageNet-21K, lr 3e-4, D = 8 d, gates from zero. The paper "
    "trains inside CMBS and gives no epochs, batch size or optimizer: Adam, 30 epochs, batch 16 "
    "are ours - tune them on validation"
)
_AVE = {
    "dataset": "ave",
    "optimizer": "adam",
    "lr": 3e-4,
    "epochs": 30,
    "batch_size": 16,
    "eval_batch_size": 16,
    "warmup_epochs": 1.0,
    "mixup": 0.0,
    "specaug": False,
}
_AST_BASE = {"esc50": _ESC, "speech_commands": _SPC, "epic_sounds": _EPIC}
_NAMES = {
    "loaa-table2": {
        "linear": "linear-probe",
        "parallel": "parallel-adapter",
        "attn-t": "loaa-attn-t",
        "ffn-f": "loaa-ffn-f",
        "5pct": "loaa-5pct",
        "10pct": "loaa-10pct",
    },
    "soft-moa-table1": {
        "linear": "smoa-linear",
        "dpt": "smoa-prompt",
        "lora": "smoa-lora",
        "bottleneck": "smoa-bottleneck",
        "d-moa": "dense-moa",
        "s-moa": "soft-moa",
    },
    "aat-table1": {
        "head": "aat-head",
        "prompt": "aat-prompt",
        "mlp": "aat-mlp",
        "mlp-spatial": "aat",
    },
    "avpea-table1": {"vit-b": "avpea", "vit-l": "avpea-vitl"},
}
"""Recipe name suffix of each trainable row (LoAA Table 1's: block, kernel and rank)."""


def _settings(table: PaperTable, row: PaperRow, dataset: str) -> tuple[dict[str, Any], str]:
    """The row's training settings on ``dataset`` and where each comes from."""
    method = {"method": row.method, **row.config}
    if table.name.startswith("loaa"):
        base = {**_AST_BASE[dataset], **method}
        if row.method == "linear":
            base["specaug"] = False
        return base, _LOAA_SRC[dataset]
    if table.name == "soft-moa-table1":
        kind = {"lora": "lora", "prompt": "prompt", "linear": "linear"}.get(row.method or "")
        ref = {
            "lr": MOA_REFERENCE["lr"][kind or "adapter"],
            **MOA_REFERENCE[dataset],
        }
        extra = {"optimizer": "adamw", "weight_decay": 0.1, "warmup_epochs": 0.0, "pool": "mean"}
        settings = {**_AST_BASE[dataset], **extra, **ref, **method}
        settings["backbone"] = AST_AUDIOSET_BACKBONE
        return settings, _MOA_SRC.format(source=MOA_REFERENCE["source"], **ref)
    if table.name == "aat-table1":
        ref = _AAT_SETTINGS[dataset]
        settings = {**_AST_BASE[dataset], **ref, **method, "backbone": AST_AUDIOSET_BACKBONE}
        return settings, _AAT_SRC.format(label=DATASET_LABELS[dataset], **ref)
    backbone = AV_BACKBONE if row.key == "vit-b" else AV_LARGE_BACKBONE
    return {**_AVE, **method, "backbone": backbone}, _AVPEA_SRC


_AAT_SETTINGS = {
    "esc50": {"batch_size": 42, "lr": 1e-4, "epochs": 25},
    "speech_commands": {"batch_size": 128, "lr": 5e-4, "epochs": 30},
}
"""AAT Table 1's per-dataset settings (ESC and SC2 columns)."""


def _name(table: PaperTable, row: PaperRow, dataset: str) -> str:
    prefix = table.recipe_prefix[dataset]
    if table.name == "loaa-table1":
        kernel = str(row.config["kernels"]).replace(":", "-").lower()
        return f"{prefix}-loaa-{kernel}-r{row.config['rank']}"
    return f"{prefix}-{_NAMES[table.name][row.key]}"


def _build() -> tuple[dict[str, Recipe], dict[tuple[str, str, str], str]]:
    """One recipe per trainable (table, row, dataset); a setting two rows share is one recipe
    (LoAA Table 1's r = 36 Attn(T) and FFN(F) rows are Table 2's)."""
    recipes: dict[str, Recipe] = {}
    by_settings: dict[str, str] = {}
    rows: dict[tuple[str, str, str], str] = {}
    order = ["loaa-table2", "loaa-table1", "soft-moa-table1", "aat-table1", "avpea-table1"]
    for table in (TABLES[n] for n in order):
        for row in table.rows:
            for dataset in row.metrics if row.method else ():
                settings, source = _settings(table, row, dataset)
                key = repr(sorted(settings.items()))
                cited = f"{table.paper.split(' (')[0]}, row '{row.row}' ({row.printed})"
                if key in by_settings:  # the same setting in another table: cite it too
                    shared = recipes[by_settings[key]]
                    recipes[shared.name] = Recipe(
                        shared.name, f"{shared.doc} Also {cited}.", shared.settings
                    )
                else:
                    name = _name(table, row, dataset)
                    doc = (
                        f"{cited}, {DATASET_LABELS[dataset]}: "
                        f"{row.note or 'config as printed'}. {source}."
                    )
                    recipes[name] = Recipe(name, doc, settings)
                    by_settings[key] = name
                rows[(table.name, row.key, dataset)] = by_settings[key]
    return recipes, rows


RECIPES, ROW_RECIPES = _build()
"""``RECIPES``: every preset by name. ``ROW_RECIPES``: (table, row key, dataset) -> the recipe
that trains that row on that dataset (``lookaside-train reproduce`` runs them)."""


def get_recipe(name: str) -> Recipe:
    """The preset called ``name``."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
