"""Training for the ``clip`` task kind: one label per spectrogram window (ESC-50, Speech Commands,
EPIC-SOUNDS, folders, CSV files).

Clips become cached fbank windows (:class:`~training.data.ClipDataset`); the module is the adapter
on spectrograms, or -- a head-only method with ``--token-cache`` -- the head alone on pooled
tokens computed once (:func:`pooled_tokens`). Several ranks (torchrun) shard the training clips.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm import tqdm

from lookaside.adapters import get_method
from lookaside.checkpoint.limits import CheckpointLimits, feature_stat_problems
from lookaside.errors import ConfigError
from lookaside.tasks import CLIP
from training.augment import BackgroundNoise
from training.cache import FeatureCache
from training.data import ClipDataset, make_loader
from training.datasets import DatasetSplits
from training.loop import AdapterForward, PooledHead, bars
from training.tasks.base import (
    Batches,
    RunSetup,
    TrainData,
    TrainingKind,
    cache_root,
    feature_config,
)

if TYPE_CHECKING:
    from lookaside.backbone import VisionTransformer
    from lookaside.features import FeatureConfig
    from lookaside.model import MultiAdapterModel
    from training.args import TrainArgs
    from training.datasets import Splits


def compute_stats(ds: ClipDataset, progress: bool) -> tuple[float, float]:
    """Mean and std of the unnormalised fbank over a split (AST's ``get_norm_stats``)."""
    total, total_sq, count = 0.0, 0.0, 0
    for i in tqdm(range(len(ds)), desc="stats", unit="clip", disable=not bars(progress)):
        fb = ds.raw(i).double()
        total += float(fb.sum())
        total_sq += float((fb * fb).sum())
        count += fb.numel()
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean * mean, 1e-12)))


def pooled_tokens(
    model: MultiAdapterModel,
    adapter_id: str,
    ds: ClipDataset,
    *,
    cache_root: Path | None,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> TensorDataset:
    """The head's pooled input for every clip, computed once and cached on disk (linear probe).

    Keyed by the backbone fingerprint, the head's pooling and every clip's feature key.
    """
    backbone, head = model.backbone, model.bank.head(adapter_id)
    path = None
    if cache_root is not None:
        key = {
            "backbone": backbone.fingerprint(),
            "pool": head.cfg.pool,
            "features": ds.cfg.model_dump(mode="json"),
            "clips": [ds.cache.key(c, "fbank") for c in ds.clips],
            "labels": [c.label for c in ds.clips],
        }
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        path = cache_root / "tokens" / f"{digest}.safetensors"
        if path.is_file():
            saved = load_file(str(path))
            return TensorDataset(saved["pooled"], saved["labels"])
    chunks, labels = [], []
    with torch.inference_mode():
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
        for x, y in tqdm(loader, desc="pooled tokens", unit="batch", disable=not bars(progress)):
            tokens, layout = backbone.forward_features(x.to(device))
            chunks.append(head.pool(tokens, layout).float().cpu())
            labels.append(y)
    pooled, label_t = torch.cat(chunks), torch.cat(labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # ranks may race on one entry
        save_file({"pooled": pooled.contiguous(), "labels": label_t}, str(tmp))
        os.replace(tmp, path)
    return TensorDataset(pooled, label_t)


class ClipTraining(TrainingKind):
    """Spectrogram windows, one label each (see the module docstring)."""

    task = CLIP
    modality = "audio-only"
    inputs = "spectrogram"
    a_method = "an audio method"

    def features(self, args: TrainArgs, splits: Splits, progress: bool) -> FeatureConfig:
        """Feature config, with the training split's measured stats under ``--compute-stats``."""
        feats = feature_config(args, splits)
        if args.compute_stats:
            train = ClipDataset(_clips(splits).train, feats, FeatureCache(cache_root(args), feats))
            mean, std = compute_stats(train, progress)
            feats = feats.model_copy(update={"mean": mean, "std": std})
            problems = feature_stat_problems(feats, CheckpointLimits())
            if problems:  # refused now, not by the checkpoint's limits after training
                raise ConfigError(
                    f"--compute-stats measured mean {mean:g}, std {std:g} on the training "
                    f"split: {'; '.join(problems)}; are the clips (nearly) silent? Check the "
                    "data, or give --mean and --std"
                )
        return feats

    def train_data(self, setup: RunSetup, model: MultiAdapterModel, adapter_id: str) -> TrainData:
        args, splits = setup.args, _clips(setup.splits)
        cache = FeatureCache(cache_root(args), setup.features)
        noise = None
        if splits.noise_dir is not None:
            noise = BackgroundNoise.from_dir(splits.noise_dir, setup.features.sample_rate)
        train_ds: Dataset[Any] = ClipDataset(splits.train, setup.features, cache, noise)
        val_ds: Dataset[Any] = ClipDataset(splits.val, setup.features, cache)
        module: nn.Module = AdapterForward(model, adapter_id)
        if get_method(args.method).head_only and args.token_cache:
            kw: dict[str, Any] = {
                "cache_root": cache_root(args),
                "batch_size": args.eval_batch_size,
                "device": setup.device,
                "progress": setup.progress,
            }
            cast(ClipDataset, train_ds).noise = None  # fixed tokens: per-epoch noise cannot apply
            train_ds = pooled_tokens(model, adapter_id, cast(ClipDataset, train_ds), **kw)
            val_ds = pooled_tokens(model, adapter_id, cast(ClipDataset, val_ds), **kw)
            module = PooledHead(model.bank, adapter_id)
        sampler: DistributedSampler[Any] | None = None
        if setup.world > 1:
            sampler = DistributedSampler(
                train_ds, setup.world, setup.rank, shuffle=True, seed=args.seed
            )
        pin = setup.device.type == "cuda"
        train = make_loader(
            train_ds,
            batch_size=args.batch_size,
            shuffle=True,
            seed=args.seed,
            workers=args.workers,
            pin_memory=pin,
            sampler=sampler,
        )
        val = make_loader(
            val_ds,
            batch_size=args.eval_batch_size,
            shuffle=False,
            seed=args.seed,
            workers=args.workers,
            pin_memory=pin,
        )
        return TrainData(train, val, module, sampler)

    def eval_module(
        self, model: MultiAdapterModel, adapter_id: str, features: FeatureConfig, splits: Splits
    ) -> nn.Module:
        return AdapterForward(model, adapter_id)

    def eval_batches(
        self,
        args: TrainArgs,
        splits: Splits,
        split: str,
        features: FeatureConfig,
        backbone: VisionTransformer,
    ) -> Batches | None:
        clips = _clips(splits).split(split)
        if not clips:
            return None
        ds = ClipDataset(clips, features, FeatureCache(cache_root(args), features))
        return DataLoader(ds, batch_size=args.eval_batch_size, shuffle=False)


def _clips(splits: Splits) -> DatasetSplits:
    """The clip kind's splits (its datasets all load :class:`DatasetSplits`)."""
    return cast(DatasetSplits, splits)
