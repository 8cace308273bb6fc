"""Training for the ``av_events`` task kind: audio-visual event localisation (AVE), one label per
second of a video.

Per-second features are cached once per video (:class:`~training.datasets.ave.AveFeatureCache`:
spectrogram + frame per second); a batch row is one whole video, packed into one tensor so
:func:`training.loop.fit` moves it unchanged, and :class:`AvForward` unpacks it into the kind's
inputs for :meth:`lookaside.tasks.TaskKind.logits`. Accuracy is per second (AVE's metric: every
second of every video counts once). One process only: the videos are not sharded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import Tensor, nn

from lookaside.errors import ConfigError
from lookaside.tasks import AV_EVENTS
from training.datasets.ave import AVE_SEGMENTS, AveFeatureCache, AveSplits, ave_loader
from training.datasets.base import DatasetError
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


class AvForward(nn.Module):
    """Packed ``[videos, N]`` inputs -> ``[videos * segments, classes]`` logits of one AV
    adapter. Registers only the bank (as ``training.loop.AdapterForward``)."""

    def __init__(
        self,
        model: MultiAdapterModel,
        adapter_id: str,
        features: FeatureConfig,
        segments: int = AVE_SEGMENTS,
    ) -> None:
        super().__init__()
        self.bank = model.bank
        self.adapter_id = adapter_id
        self.segments = segments
        self.spec_shape = (segments, features.target_frames, features.num_mel_bins)
        height, width = model.backbone.cfg.image_size
        self.pixel_shape = (segments, 3, height, width)
        object.__setattr__(self, "_model", model)

    def unpack(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[videos, N]`` -> spectrograms ``[videos, S, frames, mel]``, pixels ``[videos, S, 3,
        H, W]``."""
        n_spec = self.spec_shape[0] * self.spec_shape[1] * self.spec_shape[2]
        expected = n_spec + self.pixel_shape[0] * 3 * self.pixel_shape[2] * self.pixel_shape[3]
        if x.dim() != 2 or x.shape[1] != expected:
            raise DatasetError(
                f"packed AV inputs have {tuple(x.shape)}, expected [videos, {expected}] for "
                f"spectrograms {self.spec_shape} and pixels {self.pixel_shape}"
            )
        spec = x[:, :n_spec].reshape(x.shape[0], *self.spec_shape)
        pixels = x[:, n_spec:].reshape(x.shape[0], *self.pixel_shape)
        return spec, pixels

    def forward(self, x: Tensor) -> Tensor:
        model: MultiAdapterModel = self.__dict__["_model"]
        return AV_EVENTS.logits(model, self.unpack(x), self.adapter_id).flatten(0, 1)


class AvEventsTraining(TrainingKind):
    """Whole videos, one label per second (see the module docstring)."""

    task = AV_EVENTS
    modality = "audio-visual"
    inputs = "frames + spectrogram"
    a_method = "an audio-visual method"
    unit = "seconds"

    def check_args(self, args: TrainArgs) -> None:
        if args.mixup > 0 or args.compute_stats:
            raise ConfigError(
                f"--mixup and --compute-stats apply to audio datasets only; drop them for "
                f"{args.dataset!r} (per-second labels, AudioSet normalisation)"
            )

    def check_world(self, world: int) -> None:
        if world > 1:
            raise ConfigError(
                "--dataset ave trains on one process; run it without torchrun (WORLD_SIZE=1)"
            )

    def check_backbone(self, backbone: VisionTransformer) -> None:
        """An RGB patch kernel is needed for the visual stream (clear message otherwise)."""
        try:
            backbone.check_visual()
        except ConfigError as exc:
            raise ConfigError(f"--dataset ave needs an RGB backbone: {exc}") from None

    def features(self, args: TrainArgs, splits: Splits, progress: bool) -> FeatureConfig:
        return feature_config(args, splits)

    def train_data(self, setup: RunSetup, model: MultiAdapterModel, adapter_id: str) -> TrainData:
        args, splits = setup.args, _videos(setup.splits)
        cache = _cache(args, setup.features, model.backbone)
        common = {"seed": args.seed, "workers": args.workers}
        pin = setup.device.type == "cuda"
        return TrainData(
            ave_loader(
                splits.train,
                cache,
                batch_size=args.batch_size,
                shuffle=True,
                pin_memory=pin,
                **common,
            ),
            ave_loader(
                splits.val or splits.train,
                cache,
                batch_size=args.eval_batch_size,
                shuffle=False,
                pin_memory=pin,
                **common,
            ),
            AvForward(model, adapter_id, setup.features, splits.segments),
        )

    def eval_module(
        self, model: MultiAdapterModel, adapter_id: str, features: FeatureConfig, splits: Splits
    ) -> nn.Module:
        return AvForward(model, adapter_id, features, _videos(splits).segments)

    def eval_batches(
        self,
        args: TrainArgs,
        splits: Splits,
        split: str,
        features: FeatureConfig,
        backbone: VisionTransformer,
    ) -> Batches | None:
        ave = _videos(splits)
        videos = getattr(ave, split, None) if split in ("train", "val", "test") else None
        if not videos:
            return None
        cache = _cache(args, features, backbone)
        return ave_loader(videos, cache, batch_size=args.eval_batch_size, shuffle=False)


def _cache(
    args: TrainArgs, features: FeatureConfig, backbone: VisionTransformer
) -> AveFeatureCache:
    root = cache_root(args)
    return AveFeatureCache(root / "ave" if root else None, features, backbone.cfg.image_size)


def _videos(splits: Splits) -> AveSplits:
    """The kind's splits (its datasets load :class:`AveSplits`)."""
    return cast(AveSplits, splits)
