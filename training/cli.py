"""``lookaside-train`` / ``python -m training``: train, evaluate, predict, crossval, methods, push,
export, reproduce.

The commands; their parser (options, help, examples) is :mod:`training.cli_parser`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from lookaside.checkpoint import load_manifest
from lookaside.cli_help import plain
from lookaside.errors import ConfigError, LookasideError
from training import crossval, reproduce
from training.args import method_fields
from training.cli_common import format_table, say, train_args_of
from training.cli_parser import parser

__all__ = ["COMMANDS", "main", "parser"]


def cmd_train(ns: argparse.Namespace) -> int:
    from training.pipeline import train

    args = train_args_of(ns)
    report = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [
            [k, f"{100 * v:.2f} %" if "accuracy" in k else f"{v:.4f}"]
            for k, v in report.metrics.items()
        ]
        rows += [
            ["best epoch", str(report.best_epoch)],
            *(
                [["stopped early", f"after epoch {report.stopped_at_epoch} (--early-stop)"]]
                if report.stopped_at_epoch is not None
                else []
            ),
            [
                "trainable params",
                f"{report.trainable_params:,} ({report.trainable_percent:.3f} % of backbone)",
            ],
            ["train throughput", f"{report.train_clips_per_s:.1f} clips/s"],
            ["wall time", f"{report.seconds:.1f} s"],
            ["checkpoint", str(report.run_dir)],
        ]
        say(format_table(rows, ["summary", "value"]))
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from training.args import load_yaml
    from training.evaluation import evaluate_dir, evaluation_args, predictions_format
    from training.predict import resolve_checkpoint
    from training.reports import per_class
    from training.tasks import kind_of_dataset

    predictions_format(ns.predictions)  # a wrong suffix is refused before anything is scored
    ns.checkpoint, which = resolve_checkpoint(ns.checkpoint)
    if which:
        say(which)
    manifest = load_manifest(ns.checkpoint)
    fixed: dict[str, Any] = {"method": manifest.method}
    if "backbone" not in vars(ns):
        fixed["backbone"] = manifest.backbone.source
    skip = {"command", "config", "checkpoint", "split", "predictions"}
    layers = [load_yaml(ns.config)] if getattr(ns, "config", None) else []
    layers.append({k: v for k, v in vars(ns).items() if k not in skip})
    args, note, own_split = evaluation_args(ns.checkpoint, layers, fixed)
    if note:
        say(f"evaluating on {note}")
    if ns.split is None:  # the split the run itself was scored on (test, else val)
        ns.split = own_split
    res, ckpt, labels = evaluate_dir(ns.checkpoint, args, ns.split, predictions=ns.predictions)
    unit = kind_of_dataset(args.dataset).unit  # AVE: scored per second
    say(
        format_table(
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
    say(
        f"{ckpt.manifest.id} on {ns.split} ({res.count} {unit}): "
        f"top-1 {100 * res.accuracy:.2f} % (accuracy {res.accuracy!r}, loss {res.loss!r}), "
        f"mAP {res.mean_ap:.4f}"
    )
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from lookaside.checkpoint import load_checkpoint
    from training.pipeline import resolve_device
    from training.predict import (
        LibraryScorer,
        Limits,
        Scorer,
        ServerScorer,
        collect_files,
        output_format,
        resolve_checkpoint,
        run_predict,
    )

    for flag, value in (
        ("--top-k", ns.top_k),
        ("--batch-size", ns.batch_size),
        ("--max-files", ns.max_files),
        ("--max-windows", ns.max_windows),
        ("--max-seconds", ns.max_seconds),
    ):
        if not value > 0:  # NaN too
            raise ConfigError(f"{flag} must be greater than 0 (got {value:g})")
    directory, note = resolve_checkpoint(ns.checkpoint)
    if note:
        sys.stderr.write(note + "\n")
    fmt = output_format(ns.out, ns.timeline)
    files = collect_files(ns.paths, ns.max_files)
    scorer: Scorer
    if ns.url:
        manifest = load_manifest(directory)
        k = min(ns.top_k, len(manifest.labels))
        ref = ns.adapter or f"{manifest.name}@{manifest.version}"
        scorer = ServerScorer(
            ns.url, ref, manifest, top_k=k, timeline=ns.timeline, timeout=ns.timeout
        )
    else:
        ckpt = load_checkpoint(directory)  # the manifest is read once, with the weights
        manifest = ckpt.manifest
        k = min(ns.top_k, len(manifest.labels))
        scorer = LibraryScorer(
            ckpt,
            backbone=ns.backbone,
            device=resolve_device(ns.device),
            batch_size=ns.batch_size,
            top_k=k,
            timeline=ns.timeline,
            limits=Limits(ns.max_seconds, ns.max_windows),
        )
    total, failed = run_predict(scorer, files, ns.out, fmt, k, ns.progress)
    where = "stdout" if ns.out in (None, "-") else ns.out
    sys.stderr.write(f"{manifest.id}: {total} file(s) -> {where} ({fmt})\n")
    if failed:
        sys.stderr.write(f"error: {failed} of {total} file(s) failed (see their error field)\n")
        return 1
    return 0


def cmd_methods(ns: argparse.Namespace) -> int:
    from lookaside.adapters import ADAPTERS, HeadConfig
    from lookaside.backbones import DEFAULT_BACKBONE, PRESETS, build_random, load_backbone
    from training.export import make_bank
    from training.param_table import PAPER_CONFIGS

    # The default backbone's shape (RGB kernel kept, so AV-PEA counts too) with random weights.
    source = ns.backbone or f"random:{_default_preset(DEFAULT_BACKBONE, PRESETS)}"
    backbone = load_backbone(ns.backbone) if ns.backbone else build_random(source[7:])
    head = HeadConfig(num_classes=ns.num_classes)
    bank = make_bank(backbone, trainable=False)
    total = backbone.num_params
    rows = []
    configs = [(m, c, n) for m, c, n in PAPER_CONFIGS]
    configs += [(m, {}, "defaults") for m in ADAPTERS if m not in {c[0] for c in PAPER_CONFIGS}]
    for method, config, note in configs:
        shown = ADAPTERS[method].parse_config(config).model_dump(exclude={"layers", "variant"})
        # NBSP keeps each "--option value" on one line of the wrapped column
        text = " ".join(f"--{k.replace('_', '-')}\u00a0{_cli_value(v)}" for k, v in shown.items())
        try:
            n = sum(_numel(s) for s in bank.expected_shapes(method, config, head).values())
        except LookasideError as exc:  # e.g. AV-PEA on a spectrogram-only backbone
            rows.append([method, text or "-", note, "n/a", str(exc).split(";")[0]])
            continue
        rows.append([method, text or "-", note, f"{n:,}", f"{100 * n / total:.3f} %"])
    shape = "" if ns.backbone else f" (the shape of {DEFAULT_BACKBONE}, random weights)"
    say(f"backbone {source}{shape}: {total:,} parameters; head with {ns.num_classes} classes\n")
    width = max(shutil.get_terminal_size((100, 24)).columns, 100)
    header = ["method", "options", "note", "params", "% of backbone"]
    say(format_table(rows, header, wrap={1: 32, 2: 20, 4: max(24, width - 84)}))
    say("\noptions (lookaside-train train --method M --OPTION VALUE):")
    for name, info in method_fields().items():
        text = f"{plain(info['help'])} [{', '.join(info['methods'])}]"
        lines = textwrap.wrap(text, width - 24, break_on_hyphens=False)
        say(f"  {'--' + name.replace('_', '-'):<20}" + ("\n" + " " * 22).join(lines))
    return 0


def _default_preset(source: str, presets: dict[str, Any]) -> str:
    """The random preset with the architecture of ``source`` (a timm name's base)."""
    name = source.split(":", 1)[-1].split(".", 1)[0]
    return name if name in presets else "vit_base_patch16"


def _cli_value(value: Any) -> str:
    """A config value as the command line takes it (``attn,ffn``; ``attn:T,ffn:F``)."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


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
    say(describe(answer))
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
    say(f"wrote {ns.onnx} ({ns.onnx.stat().st_size / 1e6:.1f} MB) and {meta}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "crossval": crossval.cmd_crossval,
    "reproduce": reproduce.cmd_reproduce,
    "predict": cmd_predict,
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
