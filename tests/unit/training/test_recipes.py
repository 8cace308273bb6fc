"""The recipes at the papers' sizes: each builds valid TrainArgs, names its source, trains its
row's configuration on the row's backbone, and has the row's size."""

from __future__ import annotations

import pytest

from lookaside.adapters import HeadConfig
from lookaside.adapters.shapes import HEAD_PREFIX, expected_shapes, numel
from lookaside.backbones import PRESETS
from training.args import build_args
from training.paper_tables import TABLES, VIT_L_224
from training.param_table import backbone_params
from training.recipes import (
    AST_AUDIOSET_BACKBONE,
    AST_BACKBONE,
    AV_BACKBONE,
    AV_LARGE_BACKBONE,
    RECIPES,
    ROW_RECIPES,
)

SHAPE_OF_BACKBONE = {
    AST_BACKBONE: PRESETS["deit_base_distilled_patch16"],
    AST_AUDIOSET_BACKBONE: PRESETS["ast_base_stride10"],
    AV_BACKBONE: PRESETS["vit_base_patch16_224"],
    AV_LARGE_BACKBONE: VIT_L_224,
}
"""The shape each paper backbone source has (what the tables count on)."""


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_names_its_source(name: str) -> None:
    recipe = RECIPES[name]
    args = build_args([recipe.settings])
    args.adapter_config()
    rows = [(t, k) for (t, k, _), r in ROW_RECIPES.items() if r == name]
    assert rows, f"{name} trains no paper row"
    for table, key in rows:
        row = next(r for r in TABLES[table].rows if r.key == key)
        assert TABLES[table].paper.split(" (")[0] in recipe.doc  # paper and table
        assert f"row '{row.row}'" in recipe.doc
        assert row.printed in recipe.doc


@pytest.mark.parametrize(("table", "key", "dataset"), sorted(ROW_RECIPES))
def test_recipe_has_its_rows_size_on_its_rows_backbone(table: str, key: str, dataset: str) -> None:
    """Counted from the recipe's own settings (not the row's record), on the shape of the backbone
    the recipe names: within the paper's rounding, or off by exactly what the row documents."""
    t = TABLES[table]
    row = next(r for r in t.rows if r.key == key)
    args = build_args([RECIPES[ROW_RECIPES[(table, key, dataset)]].settings])
    assert args.dataset == dataset
    assert args.method == row.method
    shape = SHAPE_OF_BACKBONE[args.backbone]
    assert shape == (row.backbone or t.backbone)
    head = HeadConfig(num_classes=row.head_classes or 2)
    shapes = expected_shapes(shape, args.method, args.adapter_config(), head)
    ours = sum(numel(s) for k, s in shapes.items() if not k.startswith((HEAD_PREFIX, "clip.")))
    if row.head_classes:
        ours += sum(numel(s) for k, s in shapes.items() if k.startswith(HEAD_PREFIX))
    if row.params is not None:
        within = abs(ours + row.extra - row.params) <= row.half_unit
    else:
        within = abs(100 * ours / backbone_params(shape) - row.percent) <= row.percent_half  # type: ignore[operator]
    assert within == (row.gap is None), (ours, row.gap)


def test_aat_recipes_use_aat_table1_settings_per_dataset() -> None:
    """AAT Table 1: ESC batch 42, lr 1e-4, 25 epochs; SC2 batch 128, lr 5e-4, 30 epochs."""
    for name, (batch, lr, epochs) in {
        "esc50-aat": (42, 1e-4, 25),
        "esc50-aat-mlp": (42, 1e-4, 25),
        "spc2-aat": (128, 5e-4, 30),
        "spc2-aat-mlp": (128, 5e-4, 30),
    }.items():
        args = build_args([RECIPES[name].settings])
        assert (args.batch_size, args.lr, args.epochs) == (batch, lr, epochs)
        assert args.backbone == AST_AUDIOSET_BACKBONE
    assert build_args([RECIPES["esc50-aat-mlp"].settings]).method_config == {
        "rank": 192,
        "spatial": False,
    }


def test_soft_moa_recipes_follow_the_paper_and_its_code() -> None:
    """§3.1: AdamW, weight decay 0.1; the code: lr 5e-3 (adapters, LoRA), 1e-2 (prompts), 1e-3
    (linear), ESC-50 batch 32 / 50 epochs, GSC batch 128 / 75 epochs."""
    expected = {"esc50-soft-moa": 5e-3, "spc2-smoa-lora": 5e-3, "esc50-smoa-prompt": 1e-2}
    expected["spc2-smoa-linear"] = 1e-3
    for name, lr in expected.items():
        args = build_args([RECIPES[name].settings])
        assert (args.optimizer, args.weight_decay, args.lr) == ("adamw", 0.1, lr)
        assert (args.batch_size, args.epochs) == (
            (32, 50) if name.startswith("esc50") else (128, 75)
        )


def test_every_trainable_row_of_every_table_has_a_recipe_per_dataset() -> None:
    for t in TABLES.values():
        for row in t.rows:
            for dataset in row.metrics:
                assert ((t.name, row.key, dataset) in ROW_RECIPES) == (row.method is not None)
