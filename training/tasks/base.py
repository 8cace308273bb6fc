"""What training needs from a task kind: the data loaders, the module to train, the evaluation.

A dataset declares the task kind it trains (:data:`training.datasets.DATASETS`); the kind's
:class:`TrainingKind` (:data:`training.tasks.TRAINING_KINDS`) turns its splits into loaders and a
module whose forward is :meth:`lookaside.tasks.TaskKind.logits`, so :func:`training.pipeline.train`
and ``evaluate`` run the same steps for every kind and never ask which one it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from torch import Tensor, nn

from lookaside.checkpoint.limits import CheckpointLimits, min_window_hop
from lookaside.errors import ConfigError
from lookaside.features import FeatureConfig
from lookaside.tasks import TaskKind

if TYPE_CHECKING:
    import torch

    from lookaside.backbone import VisionTransformer
    from lookaside.model import MultiAdapterModel
    from training.args import TrainArgs
    from training.datasets import Splits
    from training.loop import EvalResult

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass
class RunSetup:
    """What :func:`training.pipeline.prepare` settled before the model is built."""

    args: TrainArgs
    device: torch.device
    rank: int
    world: int
    progress: bool
    splits: Splits
    features: FeatureConfig


@dataclass
class TrainData:
    """The loaders and the module :func:`training.loop.fit` trains."""

    train: Batches
    val: Batches
    module: nn.Module
    sampler: Any = None
    """A DistributedSampler to re-seed per epoch, when the run has several ranks."""


def cache_root(args: TrainArgs) -> Path | None:
    """The feature cache folder (None when ``--no-feature-cache``)."""
    return (args.cache_dir or args.out / ".cache") if args.feature_cache else None


_OPTION_OF = {
    "target_frames": "frames",
    "mean": "mean",
    "std": "std",
    "window_hop_frames": "window_hop",
}
"""The TrainArgs field (``--frames`` ...) that sets each FeatureConfig field."""


def feature_config(args: TrainArgs, splits: Splits) -> FeatureConfig:
    """The dataset's feature defaults with ``--frames`` / ``--mean`` / ``--std`` /
    ``--window-hop`` applied and validated as the checkpoint will be (the service windows long
    clips by the hop): a bad value fails here, before any training."""
    given = {field: getattr(args, name) for field, name in _OPTION_OF.items()}
    update = {k: v for k, v in given.items() if v is not None}
    if not update:
        return splits.features
    try:
        feats = FeatureConfig.model_validate({**splits.features.model_dump(), **update})
    except ValidationError as exc:
        raise ConfigError(_option_errors(exc, {**splits.features.model_dump(), **update})) from None
    check_window_hop(feats)
    return feats


def _option_errors(exc: ValidationError, values: dict[str, Any]) -> str:
    """Pydantic's errors, each named by the option that set the value."""
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        field = str(err["loc"][0]) if err["loc"] else ""
        if field in _OPTION_OF:
            option = "--" + _OPTION_OF[field].replace("_", "-")
            parts.append(f"{option} {values.get(field)}: {msg}")
        else:  # the model's own check: the hop against the window
            hop, frames = values["window_hop_frames"], values["target_frames"]
            parts.append(f"--window-hop {hop} / --frames {frames}: {msg}")
    return "; ".join(parts)


def check_window_hop(feats: FeatureConfig) -> None:
    """Refuse a ``--window-hop`` under the checkpoint limits' least hop (too many windows per
    clip: :func:`lookaside.checkpoint.limits.min_window_hop`, which the service checks too)."""
    hop, frames = feats.window_hop_frames, feats.target_frames
    limits = CheckpointLimits()
    least = min_window_hop(frames, limits)
    if hop is not None and hop < least:
        raise ConfigError(
            f"--window-hop {hop} is under {least} frames: at most {limits.max_window_overlap} "
            f"windows may cover one frame of the {frames}-frame window (--frames; the checkpoint "
            f"limit max_window_overlap); use a hop of {least}..{frames}"
        )


class TrainingKind(ABC):
    """How one task kind trains and is scored (see the module docstring)."""

    task: TaskKind
    """The serving task kind (its :meth:`~lookaside.tasks.TaskKind.logits` is the forward)."""
    modality: str
    """How errors name its data ("audio-only", "audio-visual")."""
    inputs: str
    """What one example holds, for errors ("spectrogram", "frames + spectrogram")."""
    a_method: str
    """How errors name a method that serves it ("an audio method")."""
    unit: str = "clips"
    """What ``evaluate`` counts per class."""

    def check_args(self, args: TrainArgs) -> None:
        """Refuse options that do not apply to this kind (default: none)."""
        return

    def check_world(self, world: int) -> None:
        """Refuse a distributed run this kind cannot do (default: any size)."""
        return

    def check_backbone(self, backbone: VisionTransformer) -> None:
        """Refuse a backbone this kind cannot use (default: any)."""
        return

    @abstractmethod
    def features(self, args: TrainArgs, splits: Splits, progress: bool) -> FeatureConfig:
        """The feature config the adapter is trained (and served) with."""

    @abstractmethod
    def train_data(self, setup: RunSetup, model: MultiAdapterModel, adapter_id: str) -> TrainData:
        """Train / val loaders and the module that maps a batch to ``[rows, classes]`` logits."""

    @abstractmethod
    def eval_module(
        self, model: MultiAdapterModel, adapter_id: str, features: FeatureConfig, splits: Splits
    ) -> nn.Module:
        """The module that scores one (serving-bank) adapter."""

    @abstractmethod
    def eval_batches(
        self,
        args: TrainArgs,
        splits: Splits,
        split: str,
        features: FeatureConfig,
        backbone: VisionTransformer,
    ) -> Batches | None:
        """Unshuffled batches of ``split`` (None when the split is empty or unknown)."""

    def split_metrics(self, splits: Splits, split: str, result: EvalResult) -> dict[str, float]:
        """The manifest metrics of one scored split."""
        metrics = {f"{split}_accuracy": result.accuracy, f"{split}_loss": result.loss}
        if splits.report_map:
            metrics[f"{split}_map"] = result.mean_ap
        return metrics
