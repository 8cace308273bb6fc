"""Both CLIs' help reads as user documentation (issue 18, point 6): plain text, defaults shown,
examples, switches that take no value, each subcommand with only its own options, settings
errors as one sentence per problem, and a ``methods`` table whose cells wrap at word boundaries.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lookaside.backbones import DEFAULT_BACKBONE
from lookaside.cli_help import plain, validation_lines
from service.__main__ import _parser as serve_parser
from service.settings import ServiceSettings
from training.args import COMMAND_FIELDS, OPTION_GROUPS, TRAIN_FIELDS, TrainArgs
from training.cli import main as train_main
from training.cli import parser as train_parser
from training.param_table import PAPER_CONFIGS
from training.recipes import RECIPES

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
MARKUP = re.compile(r"``|:(class|func|mod|meth|data|attr|obj|exc):|`~")
TRAIN_COMMANDS = [
    "train",
    "evaluate",
    "predict",
    "crossval",
    "methods",
    "push",
    "export",
    "reproduce",
]


def _subparsers(root: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _helps() -> dict[str, str]:
    helps = {"lookaside-serve": serve_parser().format_help()}
    root = train_parser()
    helps["lookaside-train"] = root.format_help()
    for name, sub in _subparsers(root).items():
        helps[f"lookaside-train {name}"] = sub.format_help()
    return helps


HELPS = _helps()


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


def test_every_command_has_a_help() -> None:
    assert set(HELPS) == {"lookaside-serve", "lookaside-train"} | {
        f"lookaside-train {c}" for c in TRAIN_COMMANDS
    }


@pytest.mark.parametrize("command", sorted(HELPS))
def test_help_is_plain_text_with_examples(command: str) -> None:
    text = HELPS[command]
    assert not MARKUP.search(text), MARKUP.search(text)
    assert not re.search(r"\w-\n\s+\w", text), "a word (an option name?) split at a hyphen"
    assert "\nexamples:\n" in text
    examples = text.split("\nexamples:\n", 1)[1].splitlines()
    assert sum(line.strip().startswith(command.split()[0]) for line in examples) >= 1
    for note in ("generated from", "without editing this file"):  # maintainer notes
        assert note not in text


def test_plain_strips_sphinx_markup() -> None:
    assert plain("``x``, :class:`~a.b.C`, :func:`a.b.f` and :mod:`m`") == "x, C, a.b.f and m"
    assert plain(":meth:`~k.Cls.run` on **random** weights") == "run on random weights"
    assert plain("2**24 samples, <out>/*.wav") == "2**24 samples, <out>/*.wav"


def test_defaults_are_shown() -> None:
    serve = " ".join(HELPS["lookaside-serve"].split())
    assert f"(default: {DEFAULT_BACKBONE}; env LOOKASIDE_BACKBONE)" in serve
    assert "(default: 8000; env LOOKASIDE_PORT)" in serve
    assert "(default: on; env LOOKASIDE_WARMUP)" in serve
    assert f"Default backbone: {DEFAULT_BACKBONE}" in HELPS["lookaside-train"]
    train = " ".join(HELPS["lookaside-train train"].split())
    assert f"(default: {DEFAULT_BACKBONE})" in train
    assert "(default: 25)" in train  # --epochs
    assert "(default: folder)" in train
    evaluate = " ".join(HELPS["lookaside-train evaluate"].split())
    assert "(default: the one the checkpoint records)" in evaluate
    assert "(default: the one the run was scored on" in evaluate  # --split


def test_each_subcommand_lists_only_its_options() -> None:
    evaluate = _options(HELPS["lookaside-train evaluate"])
    assert {"--split", "--data-dir", "--backbone", "--eval-batch-size", "--device"} <= evaluate
    for foreign in ("--epochs", "--lr", "--rank", "--kernels", "--method", "--recipe", "--resume"):
        assert foreign not in evaluate, foreign
    crossval = _options(HELPS["lookaside-train crossval"])
    assert {"--folds", "--epochs", "--rank", "--recipe"} <= crossval
    assert "--fold" not in crossval
    assert "--resume" not in crossval
    train = _options(HELPS["lookaside-train train"])
    assert {"--fold", "--resume", "--epochs", "--rank", "--method", "--recipe"} <= train
    assert "--split" not in train
    assert "--folds" not in train
    push = _options(HELPS["lookaside-train push"])
    assert "--epochs" not in push
    assert "--url" in push
    predict = _options(HELPS["lookaside-train predict"])
    assert {"--out", "--top-k", "--timeline", "--url", "--adapter", "--batch-size"} <= predict
    assert {"--device", "--backbone", "--max-files", "--max-seconds", "--max-windows"} <= predict
    for foreign in ("--epochs", "--split", "--data-dir", "--method", "--activate"):
        assert foreign not in predict, foreign


def test_predict_and_evaluate_defaults() -> None:
    predict = " ".join(HELPS["lookaside-train predict"].split())
    assert "(default: 5)" in predict  # --top-k
    assert "(default: 100000)" in predict  # --max-files
    assert "(default: the one the checkpoint records)" in predict  # --backbone
    ns = train_parser().parse_args(["predict", "runs/x", "a.wav", "clips/"])
    assert (ns.top_k, ns.timeline, ns.out, ns.url, ns.progress) == (5, False, None, None, True)
    assert [str(p) for p in ns.paths] == ["a.wav", "clips"]
    ns = train_parser().parse_args(["evaluate", "runs/x/1"])
    assert "data_dir" not in vars(ns)  # unset: evaluate reads the run's recorded dataset
    assert "dataset" not in vars(ns)


def test_every_train_field_is_in_one_help_section() -> None:
    grouped = [name for names in OPTION_GROUPS.values() for name in names]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == TRAIN_FIELDS - {"recipe"}
    assert COMMAND_FIELDS["train"] == set(grouped)
    assert COMMAND_FIELDS["evaluate"] < COMMAND_FIELDS["train"]


def test_switches_take_no_value() -> None:
    switches = ["--allow-no-admin-token", "--warmup", "--ray", "--ort-tensorrt"]
    ns = serve_parser().parse_args(switches)
    assert (ns.allow_no_admin_token, ns.warmup, ns.ray, ns.ort_tensorrt) == (True,) * 4
    ns = serve_parser().parse_args(["--no-warmup"])
    assert ns.warmup is False
    ns = serve_parser().parse_args([])  # unset: the environment / .env decide
    assert (ns.warmup, ns.ray, ns.allow_no_admin_token) == (None, None, None)
    with pytest.raises(SystemExit):  # a switch does not swallow the next word
        serve_parser().parse_args(["--ray", "true"])
    train = train_parser()
    assert train.parse_args(["train", "--specaug"]).specaug is True
    assert train.parse_args(["train", "--no-specaug"]).specaug is False
    assert train.parse_args(["push", "run/1", "--url", "u", "--activate"]).activate is True


def test_one_default_backbone_everywhere() -> None:
    assert ServiceSettings.model_fields["backbone"].default == DEFAULT_BACKBONE
    assert TrainArgs.backbone == DEFAULT_BACKBONE
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["lookaside"]["environment"]
    assert env["LOOKASIDE_BACKBONE"] == f"${{LOOKASIDE_BACKBONE:-{DEFAULT_BACKBONE}}}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_paper_recipes_name_their_papers_backbone(name: str) -> None:
    """A recipe reproduces a paper: it never falls back to the CLI's default backbone."""
    assert "backbone" in RECIPES[name].settings


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOOKASIDE_")}


def test_missing_admin_token_is_one_sentence(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "lookaside-serve"), "--port", "0"],
        cwd=tmp_path,  # no .env here
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr
    assert "admin_token is empty: set LOOKASIDE_ADMIN_TOKEN" in err, err
    for noise in ("validation error", "pydantic", "Traceback", "type=value_error", "errors.pydan"):
        assert noise not in err, err
    assert err.startswith("lookaside-serve: admin_token is empty")
    assert len(err.strip().splitlines()) == 1, err
    proc = subprocess.run(
        [str(BIN / "lookaside-serve"), "--port", "-1", "--mixing", "off", "--max-batch-size", "0"],
        cwd=tmp_path,
        env={**_clean_env(), "LOOKASIDE_ADMIN_TOKEN": "x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "lookaside-serve: invalid settings:",
        "  port: Input should be greater than or equal to 0",
        "  max_batch_size: Input should be greater than or equal to 1",
    ]


def test_validation_lines_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("LOOKASIDE_")]:
        monkeypatch.delenv(key)
    with pytest.raises(ValidationError) as info:
        ServiceSettings(_env_file=None, admin_token="x", port=-1, mixing="maybe")
    lines = validation_lines(info.value)
    assert lines == [
        "port: Input should be greater than or equal to 0",
        "mixing: Input should be 'on' or 'off'",
    ]


def test_real_console_scripts_print_the_help() -> None:
    """The installed entry points, in a fresh process (what a user runs)."""
    for argv, expected in (
        (["lookaside-serve", "--help"], "--warmup, --no-warmup"),
        (["lookaside-train", "evaluate", "--help"], "--split {train,val,test}"),
    ):
        proc = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert expected in proc.stdout
        assert not MARKUP.search(proc.stdout)
        assert "--epochs" not in proc.stdout


def test_methods_table_wraps_at_word_boundaries(capsys: pytest.CaptureFixture[str]) -> None:
    """Every word of every note, option help and refusal appears whole (nothing is cut
    mid-word), and no Python repr (tuples, dicts) is printed."""
    assert train_main(["methods", "--backbone", "random:test_vit", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    tokens = set(out.split())
    expected = " ".join(note for _, _, note in PAPER_CONFIGS)
    expected += " AV-PEA needs a backbone with an RGB patch kernel"  # test_vit has none
    for word in expected.split():
        assert word in tokens, word
    assert "--kernels attn:T,ffn:F" in " ".join(out.split())
    assert not re.search(r"\('|\{'|'\)|'\}", out), out
    assert max(len(line) for line in out.splitlines()) <= 130
