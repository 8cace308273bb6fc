"""``lookaside-train`` / ``python -m training``: train, evaluate, crossval, methods, push, export.

Options of ``train`` are generated from :class:`training.args.TrainArgs` and from every
registered adapter config class, so a new method or field appears here without editing this file.
Multi-GPU: ``torchrun --nproc_per_node N -m training train ...`` (DistributedDataParallel over the
adapter's parameters only; each process reads its share of every batch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from lookaside.errors import ConfigError, LookasideError
from training.args import TrainArgs, build_args, field_docs, load_yaml, method_fields
from training.recipes import RECIPES, get_recipe

_EPILOG = "recipes: " + ", ".join(RECIPES)


def _say(text: str = "") -> None:
    """Command output (stdout; progress bars and logs go to stderr)."""
    sys.stdout.write(text + "\n")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    docs = field_docs(TrainArgs)
    g = p.add_argument_group("training")
    g.add_argument("--recipe", help=f"a paper preset: {', '.join(RECIPES)}")
    g.add_argument("--config", type=Path, help="YAML file of settings (command line overrides it)")
    for f in fields(TrainArgs):
        if f.name in {"method_config", "recipe"}:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": docs.get(f.name, ""),
        }
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("Literal"):
            kw["choices"] = [c.strip(" '\"") for c in kind[8:-1].split(",")]
        elif kind.startswith("int"):
            kw["type"] = int
        elif kind.startswith("float"):
            kw["type"] = float
        elif kind.startswith("Path"):
            kw["type"] = Path
        g.add_argument(flag, **kw)
    m = p.add_argument_group("method options (each applies to the methods named)")
    for name, info in method_fields().items():
        m.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{info['help']} [{', '.join(info['methods'])}]",
        )


def _train_args(ns: argparse.Namespace, **fixed: Any) -> TrainArgs:
    given = {
        k: v
        for k, v in vars(ns).items()
        if k not in {"command", "recipe", "config", "checkpoint", "split", "folds"}
    }
    layers: list[dict[str, Any]] = []
    if ns.recipe:
        layers.append({**get_recipe(ns.recipe).settings, "recipe": ns.recipe})
    if ns.config:
        layers.append(load_yaml(ns.config))
    layers += [given, fixed]
    return build_args(layers)


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def cmd_train(ns: argparse.Namespace) -> int:
    from training.pipeline import train

    args = _train_args(ns)
    report = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [
            [k, f"{100 * v:.2f} %" if "accuracy" in k else f"{v:.4f}"]
            for k, v in report.metrics.items()
        ]
        rows += [
            ["best epoch", str(report.best_epoch)],
            [
                "trainable params",
                f"{report.trainable_params:,} ({report.trainable_percent:.3f} % of backbone)",
            ],
            ["train throughput", f"{report.train_clips_per_s:.1f} clips/s"],
            ["wall time", f"{report.seconds:.1f} s"],
            ["checkpoint", str(report.run_dir)],
        ]
        _say(_table(rows, ["summary", "value"]))
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from lookaside.checkpoint import load_manifest
    from training.pipeline import evaluate_dir
    from training.reports import per_class
    from training.tasks import kind_of_dataset

    manifest = load_manifest(ns.checkpoint)
    fixed: dict[str, Any] = {"method": manifest.method}
    if "backbone" not in vars(ns):
        fixed["backbone"] = manifest.backbone.source
    args = _train_args(ns, **fixed)
    res, ckpt, labels = evaluate_dir(ns.checkpoint, args, ns.split)
    unit = kind_of_dataset(args.dataset).unit  # AVE: scored per second
    _say(
        _table(
            [
                [
                    r["label"],
                    str(r["support"]),
                    f"{100 * r['recall']:.1f} %",
                    f"{100 * r['precision']:.1f} %",
                ]
                for r in per_class(res.confusion, labels)
            ],
            ["class", unit, "recall", "precision"],
        )
    )
    _say(
        f"{ckpt.manifest.id} on {ns.split} ({res.count} {unit}): "
        f"top-1 {100 * res.accuracy:.2f} % (accuracy {res.accuracy!r}, loss {res.loss!r}), "
        f"mAP {res.mean_ap:.4f}"
    )
    return 0


def cmd_crossval(ns: argparse.Namespace) -> int:
    from training.pipeline import train

    base = _train_args(ns)
    folds = [int(f) for f in ns.folds.split(",")]
    rows, scores = [], []
    for fold in folds:
        report = train(replace(base, fold=fold, name=f"{base.adapter_name}-fold{fold}"))
        scores.append(report.metrics["accuracy"])
        rows.append([str(fold), f"{100 * scores[-1]:.2f} %", str(report.run_dir)])
    spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
    _say(_table(rows, ["test fold", "top-1", "checkpoint"]))
    _say(
        f"mean top-1 over {len(folds)} folds: {100 * statistics.mean(scores):.2f} % "
        f"+- {100 * spread:.2f}"
    )
    return 0


def cmd_methods(ns: argparse.Namespace) -> int:
    from lookaside.adapters import ADAPTERS
    from lookaside.backbones import PRESETS, build_random, load_backbone
    from training.export import make_bank
    from training.param_table import PAPER_CONFIGS

    backbone = (
        load_backbone(ns.backbone) if ns.backbone else build_random(PRESETS["vit_base_patch16"])
    )
    from lookaside.adapters import HeadConfig

    head = HeadConfig(num_classes=ns.num_classes)
    bank = make_bank(backbone, trainable=False)
    total = backbone.num_params
    rows = []
    configs = [(m, c, n) for m, c, n in PAPER_CONFIGS]
    configs += [(m, {}, "defaults") for m in ADAPTERS if m not in {c[0] for c in PAPER_CONFIGS}]
    for method, config, note in configs:
        shown = ADAPTERS[method].parse_config(config).model_dump(exclude={"layers", "variant"})
        text = ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"
        try:
            n = sum(_numel(s) for s in bank.expected_shapes(method, config, head).values())
        except LookasideError as exc:  # e.g. AV-PEA on a spectrogram-only backbone
            rows.append([method, text, note, "n/a", str(exc).split(";")[0][:60]])
            continue
        rows.append([method, text, note, f"{n:,}", f"{100 * n / total:.3f} %"])
    _say(f"backbone {backbone.cfg.name} ({total:,} parameters); head with {ns.num_classes} classes")
    _say(_table(rows, ["method", "config", "note", "params (+head)", "% of backbone"]))
    _say("\noptions (lookaside-train train --method M --OPTION VALUE):")
    for name, info in method_fields().items():
        _say(f"  --{name.replace('_', '-'):18} {', '.join(info['methods'])}: {info['help']}")
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def cmd_push(ns: argparse.Namespace) -> int:
    from training.push import describe, push

    answer = push(
        ns.checkpoint,
        ns.url,
        token=ns.token,
        token_file=ns.token_file,
        activate=ns.activate,
        force=ns.force,
    )
    _say(describe(answer))
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from lookaside.backbones import load_backbone
    from lookaside.checkpoint import load_checkpoint, load_manifest
    from lookaside.onnx.standalone import export_standalone

    if ns.onnx.exists() and not ns.force:
        raise ConfigError(f"{ns.onnx} exists; pass --force to replace it")
    manifest = load_manifest(ns.checkpoint)
    source = ns.backbone or manifest.backbone.source
    backbone = load_backbone(source, device="cpu").eval()
    ckpt = load_checkpoint(ns.checkpoint, backbone=backbone)
    meta = export_standalone(backbone, ckpt, ns.onnx)
    _say(f"wrote {ns.onnx} ({ns.onnx.stat().st_size / 1e6:.1f} MB) and {meta}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command-line parser (all subcommands)."""
    root = argparse.ArgumentParser(
        prog="lookaside-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = root.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train", help="train an adapter, write <out>/<name>/<version>/", epilog=_EPILOG
    )
    _add_train_options(p)
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset split")
    p.add_argument("checkpoint", type=Path, help="a <name>/<version> directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    _add_train_options(p)
    p = sub.add_parser(
        "crossval", help="train once per fold (ESC-50: 1-5), mean +- std", epilog=_EPILOG
    )
    p.add_argument("--folds", default="1,2,3,4,5", help="comma-separated test folds")
    _add_train_options(p)
    p = sub.add_parser("methods", help="methods, their options and parameter counts")
    p.add_argument("--backbone", help="backbone source (default: ViT-B/16 shape, random weights)")
    p.add_argument("--num-classes", type=int, default=50)
    p = sub.add_parser("push", help="upload a checkpoint to a running server")
    p.add_argument("checkpoint", type=Path, help="a <name>/<version> directory")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://gpu-box:8000")
    p.add_argument(
        "--token-file",
        type=Path,
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
    p = sub.add_parser(
        "export",
        help="one adapter + the backbone + the fbank as a self-contained ONNX model (edge)",
        description="Write a self-contained ONNX model: 16 kHz mono waveform in, each label's "
        "score out (the adapter's first window), runnable with onnxruntime alone; a JSON with "
        "the labels and settings is written beside it. See docs/edge.md.",
    )
    p.add_argument("checkpoint", type=Path, help="a <name>/<version> directory")
    p.add_argument("--onnx", type=Path, required=True, help="the model file to write")
    p.add_argument("--backbone", help="backbone source (default: the one the checkpoint records)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    return root


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "crossval": cmd_crossval,
    "methods": cmd_methods,
    "push": cmd_push,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors of ours print one line (no traceback) and exit 2."""
    ns = parser().parse_args(argv)
    try:
        return COMMANDS[ns.command](ns)
    except LookasideError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
