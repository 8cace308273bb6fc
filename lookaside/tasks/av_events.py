"""``av_events``: per-second audio-visual events of a video (AV-PEA).

A row is one window of ``segments`` one-second segments: inputs ``(spec, pixels)`` with spec
``[rows, segments, frames, mel]`` and pixels ``[rows, segments, 3, height, width]``. Its grid
``(segments, frames, mel, height, width)`` never equals a clip row's ``(frames, mel)``, so these
rows batch only with each other. A row counts the tokens of both streams of every segment, and
its forwards are long, so the batcher lets the other kinds go first after one (:attr:`yields`).

Post-processing lives here too: a video is cut into windows of at most the adapter's segments
(:func:`segment_windows`), and each second's label distribution becomes per-second labels and
the events they form (:func:`per_second_events`; :data:`BACKGROUND_LABEL` seconds are not events).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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

BACKGROUND_LABEL = "background"
"""Label of the seconds that hold no event (AVE's 29th class)."""


class AvEventsTask(TaskKind):
    """Inputs: ``(spec, pixels)`` (see the module docstring)."""

    name = "av_events"
    summary = "audio-visual events: one label per second of a video, and the events they form"
    yields = True

    def check_inputs(self, inputs: Inputs) -> None:
        if len(inputs) != 2:
            raise ConfigError(f"the av_events task takes (spec, pixels), got {len(inputs)} inputs")
        spec, pixels = inputs
        if spec.dim() != 4 or pixels.dim() != 5 or spec.shape[:2] != pixels.shape[:2]:
            raise ConfigError(
                "spec [windows, segments, frames, mel] and pixels [windows, segments, 3, h, w] "
                f"must agree, got {tuple(spec.shape)} and {tuple(pixels.shape)}"
            )
        if spec.shape[0] == 0:
            raise ConfigError("an AV job needs at least one window")

    def grid(self, inputs: Inputs) -> tuple[int, ...]:
        """(segments, frames, mel bins, frame height, frame width)."""
        spec, pixels = inputs
        return tuple(int(d) for d in (*spec.shape[1:4], *pixels.shape[3:5]))

    def tokens_per_row(self, cfg: BackboneConfig, inputs: Inputs) -> int:
        segments, frames, mel, height, width = self.grid(inputs)
        return window_tokens(cfg, mel, frames, segments=segments, image_size=(height, width))

    def window_tokens(
        self, cfg: BackboneConfig, features: FeatureConfig, config: AdapterConfig
    ) -> int:
        return window_tokens(
            cfg, features.num_mel_bins, features.target_frames, segments=window_segments(config)
        )

    def window_label(self, config: AdapterConfig) -> str:
        return f"{window_segments(config)} segments of "

    def forward(
        self, model: MultiAdapterModel, inputs: Inputs, adapter_ids: Sequence[str | None]
    ) -> list[Tensor | None]:
        spec, pixels = inputs
        return model.forward_av(spec, pixels, adapter_ids)

    def logits(self, model: MultiAdapterModel, inputs: Inputs, adapter_id: str) -> Tensor:
        spec, pixels = inputs
        return model.logits_av(spec, pixels, adapter_id)

    def warmup_inputs(self, cfg: BackboneConfig, frames: int, mel: int) -> Inputs:
        height, width = cfg.image_size
        return torch.zeros(1, 1, frames, mel), torch.zeros(1, 1, 3, height, width)

    def wrong_kind(self, adapter_id: str, method: str) -> str:
        return (
            f"adapter {adapter_id!r} ({method}) classifies audio only: call forward()/logits() "
            "with spectrograms"
        )


AV_EVENTS = AvEventsTask()


def window_segments(config: AdapterConfig) -> int:
    """One-second segments per window of an adapter of this kind (its config's ``segments``)."""
    return max(int(getattr(config, "segments", 1)), 1)


@dataclass(frozen=True)
class SecondPrediction:
    """The label of one second of a clip."""

    t: int
    """Second index (the segment ``[t, t + 1)`` s)."""
    label: str
    score: float
    """Probability of ``label``."""


@dataclass(frozen=True)
class Event:
    """A run of consecutive seconds with the same non-background label."""

    start_s: int
    end_s: int
    """Exclusive: the event covers ``[start_s, end_s)`` seconds."""
    label: str
    score: float
    """Mean over the run of each second's probability of ``label``."""


def per_second_events(
    probabilities: Tensor, labels: Sequence[str], *, offset: int = 0
) -> tuple[list[SecondPrediction], list[Event]]:
    """Per-second labels and the events they form (background seconds are not events).

    Args:
        probabilities: ``[seconds, classes]`` softmax output for consecutive seconds.
        labels: class names in logit order (one is :data:`BACKGROUND_LABEL`).
        offset: the first row's second in the clip (windows after the first).
    """
    if probabilities.dim() != 2 or probabilities.shape[1] != len(labels):
        raise ConfigError(
            f"expected [seconds, {len(labels)}] probabilities, got {tuple(probabilities.shape)}"
        )
    scores, best = probabilities.float().max(dim=1)
    seconds = [
        SecondPrediction(offset + t, labels[int(c)], float(p))
        for t, (p, c) in enumerate(zip(scores.tolist(), best.tolist(), strict=True))
    ]
    events: list[Event] = []
    run: list[SecondPrediction] = []
    for second in [*seconds, None]:
        if run and (second is None or second.label != run[0].label):
            if run[0].label != BACKGROUND_LABEL:
                mean = sum(r.score for r in run) / len(run)
                events.append(Event(run[0].t, run[-1].t + 1, run[0].label, mean))
            run = []
        if second is not None:
            run.append(second)
    return seconds, events


def segment_windows(seconds: int, segments: int) -> list[tuple[int, int]]:
    """``[start, stop)`` second ranges of consecutive windows of at most ``segments`` seconds
    covering a clip (the temporal model takes up to ``segments``; the last window may be
    shorter)."""
    if seconds < 1 or segments < 1:
        raise ConfigError(f"need seconds >= 1 and segments >= 1, got {seconds}, {segments}")
    return [(start, min(start + segments, seconds)) for start in range(0, seconds, segments)]
