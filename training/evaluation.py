"""The ``evaluate`` command as functions: a checkpoint directory scored on a dataset split, exactly
as training scored it (:func:`training.pipeline.evaluate_checkpoint`), by default on the dataset
and split the run recorded in its ``metrics.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lookaside.backbones import load_backbone
from lookaside.checkpoint import AdapterCheckpoint, load_checkpoint
from lookaside.clip_scores import top_labels
from lookaside.errors import ConfigError
from training.args import TrainArgs, build_args
from training.datasets import DatasetSplits, Splits, load_dataset
from training.datasets.base import Clip
from training.loop import EvalResult
from training.pipeline import data_options, evaluate_checkpoint, resolve_device
from training.tasks import kind_of_dataset

__all__ = [
    "RECORDED_FIELDS",
    "Recorded",
    "evaluate_dir",
    "evaluation_args",
    "predictions_format",
    "read_recorded",
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
DRAW_FIELDS = ("fold", "num_folds", "group_by", "seed", "val_fraction", "test_fraction")
"""Options that draw a split: given on the command line, the split is drawn again from the data."""
SCORE_FIELDS = ("eval_batch_size", "precision")
"""Recorded settings that still apply when the run's ``split.csv`` gives the clips."""
MAX_METRICS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Recorded:
    """What a run's ``metrics.json`` says about its data, read once."""

    args: dict[str, Any]
    """The :data:`RECORDED_FIELDS` it holds."""
    eval_split: str
    """The split training scored (test when it had one, else val)."""


def read_recorded(run_dir: Path) -> Recorded | None:
    """``run_dir/metrics.json``'s data settings and scored split (None: no such file), read once
    and refused over :data:`MAX_METRICS_BYTES` before it is read."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise ConfigError(f"{path} is over {MAX_METRICS_BYTES} bytes; not a run's metrics.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        args = data.get("args") or {}
        split = data.get("eval_split")
        out = {k: args[k] for k in RECORDED_FIELDS if args.get(k) is not None}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{path} is not a run's metrics.json: {exc}") from None
    return Recorded(out, split if split in ("train", "val", "test") else "test")


def evaluation_args(
    run_dir: Path, layers: list[dict[str, Any]], fixed: dict[str, Any]
) -> tuple[TrainArgs, str | None, str]:
    """Settings of ``evaluate RUN``: where its clips come from < ``layers`` (``--config``, then
    the command line) < ``fixed``; a line saying where the clips come from; the default split.

    The clips: ``--data-dir`` when given; else the run's ``split.csv`` (the exact split training
    scored, whatever the data folder holds now) unless an option that draws a split is given;
    else the dataset and directory ``metrics.json`` recorded (a dataset's own split: ESC-50's
    folds). A ``--dataset`` other than the recorded one needs ``--data-dir``.
    """
    given = {k: v for layer in layers for k, v in layer.items()}
    rec = read_recorded(run_dir)
    recorded = rec.args if rec else {}
    split = rec.eval_split if rec else "test"
    if "data_dir" in given:
        if given.get("dataset", recorded.get("dataset")) != recorded.get("dataset"):
            recorded = {}
        return _fp16_checked(build_args([recorded, *layers, fixed]), given, None, "test")
    if "dataset" in given and given["dataset"] != recorded.get("dataset"):
        had = f"the recorded {recorded['dataset']}" if recorded else "none recorded"
        raise ConfigError(
            f"--dataset {given['dataset']} is not the dataset {run_dir} was trained on ({had}); "
            "pass --data-dir with it"
        )
    base, note = _clips_of(run_dir, recorded, [k for k in DRAW_FIELDS if k in given])
    return _fp16_checked(build_args([base, *layers, fixed]), given, note, split)


def _clips_of(
    run_dir: Path, recorded: dict[str, Any], drawn: list[str]
) -> tuple[dict[str, Any], str]:
    """The base settings and the note of :func:`evaluation_args` without ``--data-dir``."""
    split_csv = run_dir / "split.csv"
    where = Path(recorded["data_dir"]).expanduser() if recorded.get("data_dir") else None
    origin = f"dataset {recorded.get('dataset')} at {where} (recorded in {run_dir}/metrics.json)"
    if drawn:
        options = ", ".join("--" + k.replace("_", "-") for k in drawn)
        if where is None or not where.exists():
            gone = "records no data directory" if where is None else f"'s {where} is gone"
            raise ConfigError(
                f"{options} draw the split again from the data, but {run_dir}{gone}; pass "
                "--dataset and --data-dir"
            )
        return recorded, f"{origin}, the split drawn again ({options} given)"
    if split_csv.is_file():
        base = {k: recorded[k] for k in SCORE_FIELDS if k in recorded}
        base |= {"dataset": "csv", "data_dir": str(split_csv)}
        since = f"; {where} may hold other clips now" if where is not None else ""
        return base, f"the run's own split {split_csv} (the clips training scored{since})"
    if where is None:
        raise ConfigError(
            f"--data-dir is required ({run_dir} has no metrics.json recording the dataset and "
            "no split.csv)"
        )
    if not where.exists():
        raise ConfigError(
            f"the run's recorded data directory {where} no longer exists and {run_dir} has no "
            "split.csv; pass --dataset and --data-dir"
        )
    return recorded, origin


def _fp16_checked(
    args: TrainArgs, given: dict[str, Any], note: str | None, split: str
) -> tuple[TrainArgs, str | None, str]:
    """A recorded fp16 (CUDA only) kept on CUDA, scored in fp32 on any other device."""
    if args.precision != "fp16" or "precision" in given:
        return args, note, split
    if resolve_device(args.device).type == "cuda":
        return args, note, split
    said = "the run was scored in fp16, which needs CUDA: scoring in fp32"
    return replace(args, precision="fp32"), f"{note}; {said}" if note else said, split


def evaluate_dir(
    directory: Path,
    args: TrainArgs,
    split: str,
    *,
    predictions: Path | None = None,
) -> tuple[EvalResult, AdapterCheckpoint, list[str]]:
    """The ``evaluate`` command: a checkpoint directory on a dataset split (``args.data_dir``:
    see :func:`evaluation_args`). ``predictions``: also write every clip's scores there, in
    ``predict``'s format, from the same pass (:func:`write_clip_predictions`).
    """
    fmt = predictions_format(predictions)
    if args.data_dir is None:
        raise ConfigError(f"--data-dir is required to evaluate {directory}")
    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, device=device)
    ckpt = load_checkpoint(directory, backbone=backbone)
    splits = load_dataset(args.dataset, data_options(args))
    kind = kind_of_dataset(args.dataset)
    kind.check_backbone(backbone)
    if splits.labels != ckpt.manifest.labels:
        raise ConfigError(
            f"the dataset's labels {splits.labels[:5]}... differ from the checkpoint's "
            f"{ckpt.manifest.labels[:5]}...: evaluate on the dataset it was trained for"
        )
    if fmt is not None and not isinstance(splits, DatasetSplits):
        raise ConfigError("--predictions writes per-clip scores of audio clip datasets only")
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
        keep_scores=fmt is not None,
    )
    if predictions is not None and fmt is not None:
        assert isinstance(splits, DatasetSplits)
        write_clip_predictions(
            predictions, fmt, res, list(ckpt.manifest.labels), splits.split(split)
        )
    return res, ckpt, splits.labels


def predictions_format(out: Path | None) -> str | None:
    """``csv`` or ``jsonl`` from ``--predictions``' suffix, checked before anything is scored
    (``-`` is refused: evaluate prints its table on stdout)."""
    if out is None:
        return None
    if str(out) == "-":
        raise ConfigError(
            "--predictions -: name a .csv or .jsonl file (evaluate prints its table on stdout)"
        )
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError(f"--predictions {out}: name a .csv or .jsonl file")
    return out.suffix.lower()[1:]


def write_clip_predictions(
    out: Path, fmt: str, res: EvalResult, labels: list[str], clips: list[Clip]
) -> None:
    """Every clip's scores (every label, best first) in ``predict``'s CSV / JSONL format: the
    softmax scores of the pass ``evaluate`` printed (``res.scores``, same precision), a clip's
    first window as training sees it (``predict`` averages every window of a longer clip)."""
    from training.predict import Prediction, Writer

    if res.scores is None or len(res.scores) != len(clips):
        n = "no" if res.scores is None else len(res.scores)
        raise ConfigError(f"{n} scored rows for {len(clips)} clips: cannot write --predictions")
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = Writer(f, fmt, len(labels))
        for clip, row in zip(clips, torch.from_numpy(res.scores), strict=True):
            where = str(clip.path)
            if clip.start_s is not None or clip.end_s is not None:
                where += f"#{clip.start_s or 0:g}-{clip.end_s if clip.end_s is not None else ''}"
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
