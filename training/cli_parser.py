"""The parser of ``lookaside-train``: its commands, options, help sections and examples.

Options of ``train``, ``evaluate`` and ``crossval`` are generated from
:class:`training.args.TrainArgs` (each command gets the fields
:data:`training.args.COMMAND_FIELDS` names) and from every registered adapter config class, so a
new method or field appears here without editing this file; their help is the attribute
docstrings, made plain text by :func:`lookaside.cli_help.plain`.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from lookaside.backbones import DEFAULT_BACKBONE
from lookaside.cli_help import HelpFormatter, plain, with_default
from training import crossval, reproduce
from training.args import COMMAND_FIELDS, OPTION_GROUPS, TrainArgs, field_docs, method_fields
from training.recipes import RECIPES

_DESCRIPTION = f"""Train audio adapters on a frozen backbone, evaluate them, push them to a server.

Default backbone: {DEFAULT_BACKBONE}
(lookaside-serve's default too; downloaded once; paper recipes use their paper's backbone).

Multi-GPU: torchrun --nproc_per_node N -m training train ... (each process reads its share of
every batch; only the adapter's parameters are synchronised)."""
_EXAMPLES = {
    "root": """examples:
  lookaside-train train --dataset folder --data-dir clips/ --epochs 10
  lookaside-train evaluate runs/folder/1 --split val
  lookaside-train predict runs/folder/1 new_clips/ --out predictions.csv
  lookaside-train push runs/folder/1 --url http://127.0.0.1:8000 --activate""",
    "train": """examples:
  lookaside-train train --dataset folder --data-dir clips/ --method lora --rank 8
  lookaside-train train --recipe esc50-loaa-5pct --data-dir ESC-50-master --fold 1
  lookaside-train train --config my.yaml --epochs 5 --device cuda --precision bf16

recipes (--recipe): """,
    "evaluate": """examples:
  lookaside-train evaluate runs/folder/1                    # the run's own held-out split
  lookaside-train evaluate runs/esc50/1 --dataset esc50 --data-dir ESC-50-master --fold 1""",
    "predict": """examples:
  lookaside-train predict runs/folder new_clips/ --out predictions.csv
  lookaside-train predict runs/folder/1 a.wav b.mp3 --timeline --out predictions.jsonl
  lookaside-train predict runs/folder/1 new/ --url http://127.0.0.1:8000 --out labels.jsonl""",
    "crossval": """examples:
  lookaside-train crossval --recipe esc50-loaa-attn-t --data-dir ESC-50-master
  lookaside-train crossval --dataset esc50 --data-dir ESC-50-master --folds 1,2 --epochs 5
  lookaside-train crossval --dataset csv --data-dir clips.csv --num-folds 5 --group-by speaker

recipes (--recipe): """,
    "methods": """examples:
  lookaside-train methods
  lookaside-train methods --backbone random:test_vit --num-classes 10""",
    "push": """examples:
  lookaside-train push runs/folder/1 --url http://127.0.0.1:8000 --activate
  lookaside-train push runs/folder/1 --url http://gpu-box:8000 --token-file ~/.lookaside-token""",
    "reproduce": """examples:
  lookaside-train reproduce --help""",
    "export": """examples:
  lookaside-train export runs/folder/1 --onnx folder.onnx""",
}
_EVALUATE_HELP = {
    "backbone": "Backbone to load the checkpoint on (default: the one the checkpoint records).",
    "out": "Root of the default feature cache, <out>/.cache (default: runs).",
}
"""Help of options whose meaning differs in ``evaluate``."""
_GROUP_TITLES = {
    "data": "data",
    "model": "method and model",
    "training": "optimisation",
    "output": "output",
    "runtime": "runtime",
}


def _add_train_options(p: argparse.ArgumentParser, command: str) -> None:
    """The TrainArgs options ``command`` reads, by section; method options for train/crossval."""
    docs = field_docs(TrainArgs)
    defaults = {f.name: f.default for f in fields(TrainArgs)}
    wanted = COMMAND_FIELDS[command]
    if command != "evaluate":
        g = p.add_argument_group("settings files")
        g.add_argument("--recipe", metavar="NAME", help="a paper preset (list below)")
        g.add_argument("--config", type=Path, metavar="FILE", help="YAML file of settings")
    for group, names in OPTION_GROUPS.items():
        names = tuple(n for n in names if n in wanted)
        if not names:
            continue
        g = p.add_argument_group(_GROUP_TITLES[group])
        if group == "data" and command == "evaluate":
            g.add_argument("--config", type=Path, metavar="FILE", help="YAML file of settings")
        for name in names:
            if command == "evaluate" and name in _EVALUATE_HELP:
                help_text = _EVALUATE_HELP[name]
            else:
                help_text = with_default(docs.get(name, ""), defaults[name])
            g.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                default=argparse.SUPPRESS,
                help=help_text,
                **_option_kind(str(TrainArgs.__dataclass_fields__[name].type)),
            )
    if command == "evaluate":
        return
    m = p.add_argument_group("method options (each applies to the methods in brackets)")
    for name, info in method_fields().items():
        m.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=plain(f"{info['help']} [{', '.join(info['methods'])}]").replace("%", "%%"),
        )


def _add_predict_options(p: argparse.ArgumentParser) -> None:
    """``predict``: what to label, where to write it, and through what (library or server)."""
    from training import predict as pr

    p.add_argument(
        "checkpoint", type=Path, help="a <name>/<version> directory, or <name>/ (its highest run)"
    )
    p.add_argument(
        "paths", type=Path, nargs="+", metavar="PATH", help="audio/video files and folders"
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="FILE.csv or FILE.jsonl (default, or -: JSONL on stdout)",
    )
    p.add_argument("--top-k", type=int, default=5, help="labels per clip (at most the labels)")
    p.add_argument("--timeline", action="store_true", help="each window's top-k too (JSONL only)")
    lib = p.add_argument_group("through the library (default)")
    lib.add_argument(
        "--backbone", help="backbone to load it on (default: the one the checkpoint records)"
    )
    lib.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    lib.add_argument("--batch-size", type=int, default=32, help="windows per forward")
    srv = p.add_argument_group("through a server (the same scores from its /classify)")
    srv.add_argument("--url", help="server base URL, e.g. http://gpu-box:8000")
    srv.add_argument(
        "--adapter",
        metavar="NAME[@VERSION]",
        help="the adapter the server serves (default: the checkpoint's name@version)",
    )
    srv.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-files", type=int, default=pr.MAX_FILES, help="most files in one run")
    lim.add_argument(
        "--max-seconds", type=float, default=pr.MAX_SECONDS, help="longest clip decoded"
    )
    lim.add_argument(
        "--max-windows", type=int, default=pr.MAX_WINDOWS, help="most windows of one clip"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar on stderr when it is a terminal",
    )


def _option_kind(kind: str) -> dict[str, Any]:
    """argparse settings of a TrainArgs field from its annotation (a string here)."""
    if kind == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if kind.startswith("Literal"):
        return {"choices": [c.strip(" '\"") for c in kind[8:-1].split(",")]}
    if kind.startswith("int"):
        return {"type": int}
    if kind.startswith("float"):
        return {"type": float}
    if kind.startswith("Path"):
        return {"type": Path, "metavar": "PATH"}
    return {}


def _sub(
    sub: Any, name: str, help_text: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter and its examples."""
    epilog = _EXAMPLES[name]
    if epilog.endswith("(--recipe): "):
        epilog += ", ".join(RECIPES)
    return sub.add_parser(  # type: ignore[no-any-return]
        name,
        help=help_text,
        description=description or help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=HelpFormatter,
    )


def _add_push_options(p: argparse.ArgumentParser) -> None:
    """The options of ``push``."""
    p.add_argument("checkpoint", type=Path, help="a <name>/<version> directory")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://gpu-box:8000")
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the admin token (default: $LOOKASIDE_ADMIN_TOKEN_FILE)",
    )
    p.add_argument(
        "--token",
        help="admin token (default: $LOOKASIDE_ADMIN_TOKEN); visible in ps, prefer --token-file",
    )
    p.add_argument("--activate", action="store_true", help="serve the new version at once")
    p.add_argument(
        "--force",
        action="store_true",
        help="upload without first comparing the server's backbone with the checkpoint's",
    )


def parser() -> argparse.ArgumentParser:
    """The command-line parser (all subcommands)."""
    root = argparse.ArgumentParser(
        prog="lookaside-train",
        description=_DESCRIPTION,
        epilog=_EXAMPLES["root"],
        formatter_class=HelpFormatter,
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _sub(sub, "train", "train an adapter; writes <out>/<name>/<version>/")
    _add_train_options(p, "train")
    p = _sub(sub, "evaluate", "score a trained checkpoint on a dataset split")
    p.add_argument("checkpoint", type=Path, help="a <name>/<version> directory")
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="split to score (default: the one the run was scored on, test when it had one, "
        "else val; test when a dataset is given)",
    )
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="FILE",
        help="also write each clip's scores to FILE.csv or FILE.jsonl, in predict's format",
    )
    _add_train_options(p, "evaluate")
    p = _sub(sub, "predict", "label new clips (files or folders) with a checkpoint: CSV or JSONL")
    _add_predict_options(p)
    p = _sub(
        sub,
        "crossval",
        "train once per test fold (the dataset's own folds, else a grouped K-fold); mean and "
        "spread",
    )
    crossval.add_arguments(p)
    _add_train_options(p, "crossval")
    p = _sub(sub, "methods", "list the adapter methods, their options and parameter counts")
    p.add_argument(
        "--backbone",
        help=f"backbone source (default: the shape of {DEFAULT_BACKBONE} with random weights: "
        "nothing is downloaded)",
    )
    p.add_argument("--num-classes", type=int, default=50, help="classes of the head")
    _add_push_options(_sub(sub, "push", "upload a checkpoint to a running server"))
    p = _sub(
        sub,
        "export",
        "write one adapter + the backbone + the fbank as a self-contained ONNX model (edge)",
        description="Write a self-contained ONNX model: 16 kHz mono waveform in, each label's "
        "score out (the adapter's first window),\nrunnable with onnxruntime alone; a JSON with "
        "the labels and settings is written beside it. See docs/edge.md.",
    )
    p.add_argument("checkpoint", type=Path, help="a <name>/<version> directory")
    p.add_argument("--onnx", type=Path, required=True, metavar="FILE", help="the model to write")
    p.add_argument("--backbone", help="backbone source (default: the one the checkpoint records)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p = _sub(sub, "reproduce", "train and evaluate every row of a paper's table (GPU host)")
    reproduce.add_arguments(p)
    return root
