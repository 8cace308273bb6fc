"""Trained adapter -> a store-ready checkpoint directory ``<out>/<name>/<run>/``.

The directory holds exactly what the service's store holds (``manifest.json`` +
``adapter.safetensors``, written atomically by :meth:`AdapterCheckpoint.save`), so it can be
pushed as is or copied into ``adapters_store/``. Reports (metrics, plots, split) go beside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import ConfigError
from lookaside.features import FeatureConfig

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def check_name(name: str) -> str:
    """An adapter name the store accepts, or a message with the rule."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"--name {name!r}: use 1-64 lower-case letters, digits, '-' or '_', starting with a "
            "letter or digit"
        )
    return name


def next_run(parent: Path) -> int:
    """One more than the largest integer-named directory under ``parent`` (1 if none)."""
    runs = [int(p.name) for p in parent.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(runs, default=0) + 1


def make_bank(backbone: VisionTransformer, *, trainable: bool) -> AdapterBank:
    """A bank beside ``backbone`` (one slot per stack when training, as docs/design.md §4 says)."""
    for_backbone = getattr(AdapterBank, "for_backbone", None)
    if for_backbone is not None:
        bank: AdapterBank = for_backbone(backbone, trainable=trainable)
        return bank
    device = next(backbone.parameters()).device
    kw: dict[str, Any] = {"device": device, "trainable": trainable}
    if trainable:
        kw["slots_per_stack"] = 1
    return AdapterBank(backbone.cfg, **kw)


def checkpoint_of(
    bank: AdapterBank,
    adapter_id: str,
    *,
    backbone: VisionTransformer,
    name: str,
    version: int,
    task: str,
    labels: Sequence[str],
    features: FeatureConfig,
    metrics: Mapping[str, float] | None = None,
) -> AdapterCheckpoint:
    """Copies of the adapter's tensors in float32 with a manifest (nothing written yet)."""
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        adapter_id,
        name=name,
        version=version,
        task=task,
        task_type="multiclass",
        labels=labels,
        features=features,
        backbone=backbone,
        metrics=metrics,
    )
    ckpt.tensors = {k: v.to(torch.float32) for k, v in ckpt.tensors.items()}
    return ckpt
