"""A clip's scores from its windows' logits: what ``POST /classify`` answers and what
``lookaside-train predict`` writes, computed by this one module so the two agree.

A clip longer than one window is cut into windows (:func:`lookaside.features.extract_windows`,
``window_hop_frames`` apart); each window is scored (:func:`lookaside.adapters.head.scores_of`)
and the clip's scores are the **mean of the window scores**. A window's span ends at the clip's
end when it runs past it (the last window is zero-padded).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lookaside.adapters.head import scores_of

__all__ = ["ClipScores", "clip_scores", "top_labels", "window_end"]


class ClipScores(NamedTuple):
    """Scores of one clip under one adapter."""

    windows: Tensor
    """``[windows, classes]`` fp32 score of each window."""
    clip: Tensor
    """``[classes]`` the clip's scores: the mean over its windows."""


def clip_scores(logits: Tensor, *, multi_label: bool) -> ClipScores:
    """Window and clip scores from ``[windows, classes]`` logits (softmax, or a sigmoid per class
    for a multi-label head)."""
    scores = scores_of(logits, multi_label=multi_label)
    return ClipScores(scores, scores.mean(dim=0))


def top_labels(scores: Tensor, labels: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` (at most all) best ``(label, score)`` of one ``[classes]`` row, best first."""
    values, index = torch.topk(scores, min(k, len(labels)))
    return [
        (labels[int(i)], float(v)) for v, i in zip(values.tolist(), index.tolist(), strict=True)
    ]


def window_end(start_s: float, window_s: float, duration_s: float) -> float:
    """Where a window starting at ``start_s`` ends: one window later, or at the clip's end."""
    return min(start_s + window_s, duration_s)
