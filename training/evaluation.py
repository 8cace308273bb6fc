"""The ``evaluate`` command as functions: a checkpoint directory scored on a dataset split, exactly
as training scored it (:func:`training.pipeline.evaluate_checkpoint`), by default on the dataset
and split the run recorded in its ``metrics.json``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lookaside.backbone import VisionTransformer
from lookaside.backbones import load_backbone
from lookaside.checkpoint import AdapterCheckpoint, load_checkpoint
from lookaside.clip_scores import top_labels
from lookaside.errors import ConfigError
from lookaside.model import MultiAdapterModel
from training.args import TrainArgs, build_args
from training.datasets import DatasetSplits, Splits, load_dataset
from training.export import make_bank
from training.loop import EvalResult
from training.pipeline import data_options, evaluate_checkpoint, resolve_device
from training.tasks import kind_of_dataset

__all__ = [
    "RECORDED_FIELDS",
    "evaluate_dir",
    "evaluation_args",
    "recorded_args",
    "write_clip_predictions",
]

RECORDED_FIELDS = (
    "dataset",
    "data_dir",
    "fold",
    "num_folds",
    "group_by",
    "seed",
    "val_fraction",
    "test_fraction",
    "audio",
    "h5_sample_rate",
    "eval_batch_size",
    "precision",
)
"""What ``evaluate RUN`` takes from the run's ``metrics.json`` ``args``: the dataset, how its
split was drawn, and how it was scored."""
MAX_METRICS_BYTES = 16 * 1024 * 1024


def recorded_args(run_dir: Path) -> dict[str, Any] | None:
    """The data settings ``run_dir/metrics.json`` recorded (None: no such file)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise ConfigError(f"{path} is over {MAX_METRICS_BYTES} bytes; not a run's metrics.json")
    try:
        args = json.loads(path.read_text(encoding="utf-8")).get("args") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    out = {k: args[k] for k in RECORDED_FIELDS if args.get(k) is not None}
    if out.get("precision") == "fp16":  # CUDA only; evaluate may run elsewhere
        del out["precision"]
    return out


def recorded_split(run_dir: Path) -> str:
    """The split ``train`` scored the run on (``eval_split`` of its metrics.json: test when it
    had one, else val); ``test`` when nothing is recorded."""
    try:
        split = json.loads((run_dir / "metrics.json").read_text()).get("eval_split")
    except (OSError, ValueError, AttributeError):
        return "test"
    return split if split in ("train", "val", "test") else "test"


def evaluation_args(
    run_dir: Path, layers: list[dict[str, Any]], fixed: dict[str, Any]
) -> tuple[TrainArgs, str | None]:
    """Settings of ``evaluate RUN``: the run's recorded data settings < ``layers`` (``--config``,
    then the command line) < ``fixed``; and a line saying where the data comes from.

    A ``--dataset`` other than the recorded one drops the record; a recorded data directory that
    no longer exists falls back to the run's ``split.csv``.
    """
    given = {k: v for layer in layers for k, v in layer.items()}
    recorded = recorded_args(run_dir) or {}
    if "dataset" in given and given["dataset"] != recorded.get("dataset"):
        recorded = {}
    note = None
    if recorded and "data_dir" not in given:
        where = Path(recorded["data_dir"]).expanduser()
        note = f"dataset {recorded['dataset']} at {where} (recorded in {run_dir}/metrics.json)"
        if not where.exists():
            split_csv = run_dir / "split.csv"
            if not split_csv.is_file():
                raise ConfigError(
                    f"the run's recorded data directory {where} no longer exists and {run_dir} "
                    "has no split.csv; pass --dataset and --data-dir"
                )
            recorded = {"dataset": "csv", "data_dir": str(split_csv), "seed": recorded.get("seed")}
            note = f"the recorded {where} no longer exists; using the run's split {split_csv}"
    return build_args([recorded, *layers, fixed]), note


def evaluate_dir(
    directory: Path,
    args: TrainArgs,
    split: str,
    *,
    predictions: Path | None = None,
) -> tuple[EvalResult, AdapterCheckpoint, list[str]]:
    """The ``evaluate`` command: a checkpoint directory on a dataset split.

    Without ``--data-dir``, the run's own ``split.csv`` (written beside a checkpoint trained on a
    drawn split) is used. ``predictions``: also write every clip's scores there, in
    ``predict``'s format (:func:`write_clip_predictions`).
    """
    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, device=device)
    ckpt = load_checkpoint(directory, backbone=backbone)
    if args.data_dir is None:
        if not (directory / "split.csv").is_file():
            raise ConfigError(
                f"--data-dir is required ({directory} has no metrics.json recording the dataset "
                "and no split.csv)"
            )
        args = replace(args, dataset="csv", data_dir=directory / "split.csv")
    splits = load_dataset(args.dataset, data_options(args))
    kind = kind_of_dataset(args.dataset)
    kind.check_backbone(backbone)
    if splits.labels != ckpt.manifest.labels:
        raise ConfigError(
            f"the dataset's labels {splits.labels[:5]}... differ from the checkpoint's "
            f"{ckpt.manifest.labels[:5]}...: evaluate on the dataset it was trained for"
        )
    batches = kind.eval_batches(args, splits, split, ckpt.manifest.features, backbone)
    if batches is None:
        raise ConfigError(empty_split_message(splits, split, args, directory))
    res = evaluate_checkpoint(
        kind,
        ckpt,
        backbone,
        batches,
        splits,
        device=device,
        precision=args.precision,
        progress=args.progress,
    )
    if predictions is not None:
        write_clip_predictions(predictions, ckpt, backbone, splits, split, args, device)
    return res, ckpt, splits.labels


def write_clip_predictions(
    out: Path,
    ckpt: AdapterCheckpoint,
    backbone: VisionTransformer,
    splits: Splits,
    split: str,
    args: TrainArgs,
    device: torch.device,
) -> None:
    """Every clip's scores on ``split`` (every label, best first) in ``predict``'s CSV / JSONL
    format, from the batches and module ``evaluate`` scores: a clip's first window, as training
    sees it (``predict`` averages every window of a longer clip)."""
    from training.predict import Prediction, Writer, output_format

    if not isinstance(splits, DatasetSplits):
        raise ConfigError("--predictions writes per-clip scores of audio clip datasets only")
    fmt = output_format(str(out), timeline=False)
    kind = kind_of_dataset(args.dataset)
    batches = kind.eval_batches(args, splits, split, ckpt.manifest.features, backbone)
    bank = make_bank(backbone, trainable=False)
    module = kind.eval_module(
        MultiAdapterModel(backbone, bank), ckpt.load_into(bank), ckpt.manifest.features, splits
    )
    module.eval()
    labels = list(ckpt.manifest.labels)
    clips = iter(splits.split(split))
    with out.open("w", newline="", encoding="utf-8") as f, torch.inference_mode():
        writer = Writer(f, fmt, len(labels))
        for x, _ in batches or []:
            for row in module(x.to(device)).float().softmax(-1).cpu():
                clip = next(clips)
                where = str(clip.path)
                if clip.start_s is not None or clip.end_s is not None:
                    where += (
                        f"#{clip.start_s or 0:g}-{clip.end_s if clip.end_s is not None else ''}"
                    )
                writer.write(Prediction(where, top_k=top_labels(row, labels, len(labels))))


def empty_split_message(splits: Splits, split: str, args: TrainArgs, run_dir: Path) -> str:
    """Which splits have clips, and how to get the one asked for."""
    counts = {s: len(getattr(splits, s)) for s in ("train", "val", "test")}
    have = ", ".join(f"{s} ({n})" for s, n in counts.items() if n) or "none"
    others = [s for s in ("val", "test") if counts[s] and s != split]
    advice = (
        "train with a test split (e.g. --test-fraction 0.2)"
        if split == "test"
        else f"train with a {split} split"
    )
    if others:
        advice += f", or evaluate another: lookaside-train evaluate {run_dir} --split {others[0]}"
    return (
        f"split {split!r} of {args.dataset} at {args.data_dir} has no clips; the splits with "
        f"clips: {have}. To score a {split} split, {advice}"
    )
