"""``clip``: classify an audio clip, window by window (every audio-only adapter method).

A row is one spectrogram window ``[frames, mel]``; rows of one forward share ``(frames, mel)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lookaside.backbone_config import window_tokens
from lookaside.errors import ConfigError
from lookaside.tasks.base import Inputs, TaskKind

if TYPE_CHECKING:
    from lookaside.adapters.base import AdapterConfig
    from lookaside.backbone_config import BackboneConfig
    from lookaside.features import FeatureConfig
    from lookaside.model import MultiAdapterModel


class ClipTask(TaskKind):
    """Inputs: ``(features,)``, features ``[rows, frames, mel]`` normalised fbank."""

    name = "clip"
    summary = "audio clip classification: one label distribution per window, and a timeline"

    def check_inputs(self, inputs: Inputs) -> None:
        if len(inputs) != 1:
            raise ConfigError(f"the clip task takes one input (features), got {len(inputs)}")
        if inputs[0].dim() != 3 or inputs[0].shape[0] == 0:
            raise ConfigError(
                f"features must be [rows>0, frames, mel], got {tuple(inputs[0].shape)}"
            )

    def grid(self, inputs: Inputs) -> tuple[int, ...]:
        """(frames, mel bins)."""
        return int(inputs[0].shape[1]), int(inputs[0].shape[2])

    def tokens_per_row(self, cfg: BackboneConfig, inputs: Inputs) -> int:
        frames, mel = self.grid(inputs)
        return window_tokens(cfg, mel, frames)

    def window_tokens(
        self, cfg: BackboneConfig, features: FeatureConfig, config: AdapterConfig
    ) -> int:
        return window_tokens(cfg, features.num_mel_bins, features.target_frames)

    def forward(
        self, model: MultiAdapterModel, inputs: Inputs, adapter_ids: Sequence[str | None]
    ) -> list[Tensor | None]:
        return model.forward(inputs[0], adapter_ids)

    def logits(self, model: MultiAdapterModel, inputs: Inputs, adapter_id: str) -> Tensor:
        return model.logits(inputs[0], adapter_id)

    def warmup_inputs(self, cfg: BackboneConfig, frames: int, mel: int) -> Inputs:
        return (torch.zeros(1, frames, mel),)

    def wrong_kind(self, adapter_id: str, method: str) -> str:
        return (
            f"adapter {adapter_id!r} ({method}) is audio-visual: call "
            "forward_av()/logits_av() with spectrograms and frames per segment"
        )


CLIP = ClipTask()
