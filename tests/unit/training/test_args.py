"""Settings layers, method options generated from the config classes, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookaside.adapters import ADAPTERS
from lookaside.errors import ConfigError
from training.args import build_args, method_fields
from training.cli import parser
from training.cli_common import train_args_of
from training.recipes import RECIPES


def test_every_registered_config_field_is_an_option() -> None:
    options = method_fields()
    for name, method in ADAPTERS.items():
        for field in method.config_cls.model_fields:
            if field != "variant":
                assert name in options[field]["methods"], (name, field)
    help_text = parser().format_help()
    assert "train" in help_text


def test_precedence_recipe_then_yaml_then_command_line(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 3\nrank: 12\nlr: 0.01\n")
    ns = parser().parse_args(
        [
            "train",
            "--recipe",
            "esc50-loaa-5pct",
            "--config",
            str(yaml_file),
            "--lr",
            "0.002",
            "--data-dir",
            "x",
        ]
    )
    args = train_args_of(ns)
    assert args.method == "loaa"
    assert args.dataset == "esc50"
    assert args.epochs == 3  # yaml over recipe
    assert args.lr == 0.002  # command line over yaml
    cfg = args.adapter_config()
    assert cfg.rank == 12
    assert cfg.kernels == {"attn": "T", "ffn": "F"}
    assert args.recipe == "esc50-loaa-5pct"


def test_option_of_another_method_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"--num-experts does not apply to method 'loaa'.*--kernels"
    ):
        build_args([{"method": "loaa", "num_experts": "4"}])


def test_invalid_value_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"--rank"):
        build_args([{"method": "loaa", "rank": "-3"}])
    with pytest.raises(ConfigError, match="unknown dataset 'esc51'.*esc50"):
        build_args([{"dataset": "esc51"}])


def test_list_options_split_on_commas() -> None:
    args = build_args([{"method": "bottleneck", "sites": "attn,ffn", "layers": "0,2"}])
    cfg = args.adapter_config()
    assert cfg.sites == ("attn", "ffn")
    assert cfg.layers == (0, 2)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_cites_its_source(name: str) -> None:
    recipe = RECIPES[name]
    assert "Table" in recipe.doc
    args = build_args([recipe.settings])
    args.adapter_config()


def test_audio_visual_methods_are_refused_with_the_audio_ones() -> None:
    with pytest.raises(ConfigError, match=r"'avpea' is audio-visual.*loaa"):
        build_args([{"method": "avpea"}])


def test_fold_numbers_are_checked_by_the_layout_not_here() -> None:
    """A CSV's own folds may count from 0 or hold negatives; the loader checks membership."""
    assert build_args([{"fold": 0}]).fold == 0
    assert build_args([{"fold": -2}]).fold == -2


def test_validation_and_test_shares_must_leave_training_clips() -> None:
    with pytest.raises(ConfigError, match=r"--val-fraction 0.5 \+ --test-fraction 0.5 .* below 1"):
        build_args([{"val_fraction": 0.5, "test_fraction": 0.5}])
    assert build_args([{"val_fraction": 0.4, "test_fraction": 0.5}]).test_fraction == 0.5
