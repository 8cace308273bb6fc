"""``train`` and ``evaluate`` on an audio-visual dataset (AVE) with an audio-visual method.

The same steps as :mod:`training.pipeline` (whose helpers this reuses): per-second features
cached once per video (:class:`~training.datasets.ave.AveFeatureCache`: spectrogram + frame per
second), one trainable AV-PEA adapter, :func:`~training.loop.fit` on packed whole videos
(:class:`~training.datasets.ave.AvForward`), the best epoch exported as a checkpoint, which is then
loaded into a fresh bank and scored by :func:`evaluate_av_checkpoint` -- the function the
``evaluate`` command runs, so both print the same number. Accuracy is per second (AVE's metric:
every second of every video counts once).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from lookaside.backbone import VisionTransformer
from lookaside.backbones import load_backbone
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import ConfigError
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from training.args import TrainArgs
from training.datasets.ave import (
    AveFeatureCache,
    AveSplits,
    AveVideo,
    AvForward,
    ave_loader,
)
from training.export import check_name, checkpoint_of, make_bank
from training.loop import EvalResult, FitState, evaluate, fit, load_adapter_tensors
from training.pipeline import (
    ADAPTER_ID,
    TrainReport,
    _check_frozen,
    _jsonable,
    _loop_config,
    _model,
    _rank_hashes,
    _version,
    _write_reports,
    feature_config,
)
from training.state import save_state


def _require_av_backbone(backbone: VisionTransformer) -> None:
    """An RGB patch kernel is needed for the visual stream (clear message otherwise)."""
    try:
        backbone.check_visual()
    except ConfigError as exc:
        raise ConfigError(f"--dataset ave needs an RGB backbone: {exc}") from None


def _cache(
    args: TrainArgs, features: FeatureConfig, backbone: VisionTransformer
) -> AveFeatureCache:
    root = (args.cache_dir or args.out / ".cache") / "ave" if args.feature_cache else None
    return AveFeatureCache(root, features, backbone.cfg.image_size)


def train_av(args: TrainArgs, splits: AveSplits, device: torch.device) -> TrainReport:
    """One training job on ``splits`` (see the module docstring)."""
    started = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "--dataset ave trains on one process; run it without torchrun (WORLD_SIZE=1)"
        )
    progress = args.progress
    features = feature_config(args, splits)
    name = check_name(args.adapter_name)
    version, state, current = _version(args, name, 1)
    run_dir = args.out / name / str(version)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} already holds a checkpoint; pick another --version")

    torch.manual_seed(args.seed)
    backbone = load_backbone(args.backbone, device=device)
    _require_av_backbone(backbone)
    frozen_before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    model, params = _model(args, backbone, len(splits.labels), current, progress)
    bank = model.bank
    cache = _cache(args, features, backbone)
    module = AvForward(model, ADAPTER_ID, features, splits.segments)
    pin = device.type == "cuda"

    def loader(
        videos: list[AveVideo], batch_size: int, shuffle: bool
    ) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        return ave_loader(
            videos,
            cache,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=args.seed,
            workers=args.workers,
            pin_memory=pin,
        )

    train_loader = loader(splits.train, args.batch_size, True)
    val_loader = loader(splits.val or splits.train, args.eval_batch_size, False)
    state_dir = args.out / name / f".state-v{version}"

    def snapshot() -> dict[str, torch.Tensor]:
        return bank.adapter_tensors(ADAPTER_ID)

    def on_epoch_end(s: FitState) -> None:
        save_state(state_dir, s, snapshot(), {"version": version, "args": _jsonable(args)})

    def set_epoch(epoch: int) -> None:  # a fresh, seeded shuffle order per epoch
        train_loader.generator.manual_seed(args.seed * 100_003 + epoch)

    state = fit(
        module,
        params,
        train_loader,
        val_loader,
        _loop_config(args, progress),
        num_classes=len(splits.labels),
        device=device,
        snapshot=snapshot,
        state=state,
        on_epoch_end=on_epoch_end,
        set_epoch=set_epoch,
    )
    _check_frozen(backbone, frozen_before)
    load_adapter_tensors(bank, ADAPTER_ID, state.best_tensors)
    ckpt = checkpoint_of(
        bank,
        ADAPTER_ID,
        backbone=backbone,
        name=name,
        version=version,
        task=args.task or splits.task,
        labels=splits.labels,
        features=features,
    )
    metrics: dict[str, float] = {}
    results: dict[str, EvalResult] = {}
    for split in ("val", "test"):
        videos = getattr(splits, split)
        if not videos:
            continue
        res = evaluate_av_checkpoint(
            ckpt,
            backbone,
            videos,
            cache,
            batch_size=args.eval_batch_size,
            device=device,
            precision=args.precision,
            progress=progress,
            segments=splits.segments,
        )
        results[split] = res
        metrics[f"{split}_accuracy"] = res.accuracy
        metrics[f"{split}_loss"] = res.loss
    if not results:
        raise ConfigError("AVE has no val or test videos to score the checkpoint on")
    final = "test" if "test" in results else "val"
    metrics["accuracy"] = results[final].accuracy
    ckpt.manifest = ckpt.manifest.model_copy(update={"metrics": metrics})
    report = TrainReport(
        run_dir=run_dir,
        metrics=metrics,
        best_epoch=state.best_epoch,
        trainable_params=ckpt.manifest.trainable_params,
        trainable_percent=ckpt.manifest.trainable_percent,
        train_clips_per_s=float(np.mean([h.clips_per_s for h in state.history]))
        if state.history
        else 0.0,
        seconds=time.perf_counter() - started,
    )
    ckpt.save(run_dir)
    ranks_sha = _rank_hashes(snapshot(), 1)
    _write_reports(run_dir, args, splits, state, results, final, report, ranks_sha, 1)
    return report


def evaluate_av_checkpoint(
    ckpt: AdapterCheckpoint,
    backbone: VisionTransformer,
    videos: list[AveVideo],
    cache: AveFeatureCache,
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    progress: bool = False,
    segments: int,
) -> EvalResult:
    """A checkpoint in a fresh (serving) bank scored per second on ``videos``."""
    bank = make_bank(backbone, trainable=False)
    adapter_id = ckpt.load_into(bank)
    model = MultiAdapterModel(backbone, bank)
    return evaluate(
        AvForward(model, adapter_id, ckpt.manifest.features, segments),
        ave_loader(videos, cache, batch_size=batch_size, shuffle=False),
        device=device,
        precision=precision,  # type: ignore[arg-type]
        num_classes=len(ckpt.manifest.labels),
        progress=progress,
    )


def evaluate_av_dir(
    ckpt: AdapterCheckpoint,
    backbone: VisionTransformer,
    args: TrainArgs,
    split: str,
    splits: AveSplits,
    device: torch.device,
) -> tuple[EvalResult, AdapterCheckpoint, list[str]]:
    """The ``evaluate`` command for an audio-visual checkpoint on an AVE split."""
    _require_av_backbone(backbone)
    if splits.labels != ckpt.manifest.labels:
        raise ConfigError(
            f"the dataset's labels {splits.labels[:5]}... differ from the checkpoint's "
            f"{ckpt.manifest.labels[:5]}...: evaluate on the dataset it was trained for"
        )
    videos = getattr(splits, split, None) if split in ("train", "val", "test") else None
    if not videos:
        raise ConfigError(f"split {split!r} of ave is empty; choose train, val or test")
    res = evaluate_av_checkpoint(
        ckpt,
        backbone,
        videos,
        _cache(args, ckpt.manifest.features, backbone),
        batch_size=args.eval_batch_size,
        device=device,
        precision=args.precision,
        progress=args.progress,
        segments=splits.segments,
    )
    return res, ckpt, splits.labels
