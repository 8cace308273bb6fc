"""The ``evaluate`` command as a function: a checkpoint directory scored on a dataset split,
exactly as training scored it (:func:`training.pipeline.evaluate_checkpoint`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lookaside.backbones import load_backbone
from lookaside.checkpoint import AdapterCheckpoint, load_checkpoint
from lookaside.errors import ConfigError
from training.args import TrainArgs
from training.datasets import load_dataset
from training.loop import EvalResult
from training.pipeline import data_options, evaluate_checkpoint, resolve_device
from training.tasks import kind_of_dataset

__all__ = ["evaluate_dir"]


def evaluate_dir(
    directory: Path,
    args: TrainArgs,
    split: str,
) -> tuple[EvalResult, AdapterCheckpoint, list[str]]:
    """The ``evaluate`` command: a checkpoint directory on a dataset split.

    Without ``--data-dir``, the run's own ``split.csv`` (written beside a checkpoint trained on a
    drawn split) is used.
    """
    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, device=device)
    ckpt = load_checkpoint(directory, backbone=backbone)
    if args.data_dir is None:
        if not (directory / "split.csv").is_file():
            raise ConfigError(f"--data-dir is required ({directory} has no split.csv)")
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
        raise ConfigError(f"split {split!r} of {args.dataset} is empty; choose train, val or test")
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
    return res, ckpt, splits.labels
