"""Decoded audio blocks gathered under a budget: what decoding may hold is bounded by what it
keeps, never by what a header claims.

:class:`Sink` counts every decoded block (channels x frames at the file's own rate) against the
budget of decoded samples before keeping it, refuses as soon as the budget or the length limit
is passed, and downmixes (:func:`downmix`) and resamples
(:class:`~lookaside.resample.StreamResampler`) blocks as they arrive where asked.
:func:`check_header_budget` refuses before decoding what a header already promises over budget.
One sink per decode, used by the thread that decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lookaside.decode_probe import too_large, too_long
from lookaside.errors import BadAudio
from lookaside.resample import StreamResampler

__all__ = ["DecodeLimits", "Sink", "check_header_budget", "downmix"]


def downmix(wave: Tensor) -> Tensor:
    """``[C, N]`` float -> ``[N]`` channel mean (AST's recipe is mono).

    Summed channel by channel and divided once: element-wise operations only, so a waveform
    downmixed block by block while decoding equals the whole array downmixed, bit for bit (a
    reduction kernel's result depends on where its vectorised blocks fall). One channel is
    returned as a view.
    """
    if wave.dim() != 2 or wave.shape[0] == 0:
        raise BadAudio("unsupported", f"expected [channels, samples], got {tuple(wave.shape)}")
    if wave.shape[0] == 1:
        return wave[0]
    total = wave[0] + wave[1]
    for channel in wave[2:]:
        total.add_(channel)
    return total.div_(wave.shape[0])


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may hold and how it keeps blocks (the arguments of
    :func:`lookaside.decode.decode_audio`)."""

    max_seconds: float
    """Longest audio accepted (``too_long``)."""
    max_samples: int | None
    """Budget of decoded samples (channels x frames at the file's rate); None: no budget."""
    mono: bool
    """Downmix each block as it arrives."""
    resample_to: int | None
    """With ``mono``: resample the downmixed blocks to this rate as they arrive."""


class Sink:
    """Decoded ``[C, n]`` float32 blocks -> one ``[C or 1, N]`` array, counted against the budget.

    Every block is counted before it is kept (channels x frames at the file's own rate) and the
    budget refusal comes as soon as it is passed. With ``expected`` frames (a header libsndfile
    reads exactly) the output is allocated once and filled; otherwise blocks are gathered and
    joined at the end. With ``resample_to``, downmixed blocks go through a stream resampler
    instead of being kept at the file's rate.
    """

    def __init__(
        self, limits: DecodeLimits, channels: int, rate: int, expected: int | None
    ) -> None:
        self.limits = limits
        self.channels = channels
        self.rate = rate
        self.counted = 0  # samples (channels x frames) decoded so far
        self.frames = 0
        rows = 1 if limits.mono else channels
        self._stream: StreamResampler | None = None
        self._buffer: np.ndarray | None = None
        if limits.resample_to is not None and limits.resample_to != rate:
            self._stream = StreamResampler(rate, limits.resample_to, expected=expected)
        elif expected:
            self._buffer = np.empty((rows, expected), np.float32)
        self._blocks: list[np.ndarray] = []

    def frames_allowed(self) -> int | None:
        """Frames the budget still allows (one more shows that it is passed), None: no budget."""
        if self.limits.max_samples is None:
            return None
        return max(0, (self.limits.max_samples - self.counted) // self.channels) + 1

    def reserve(self, samples: int) -> None:
        """Refuse before producing ``samples`` more samples that the budget cannot hold."""
        budget = self.limits.max_samples
        if budget is not None and self.counted + samples > budget:
            raise too_large(self.channels, self.rate, budget, budget, at_least=True)

    def add(self, block: np.ndarray) -> None:
        """Keep one ``[channels, n]`` float32 block (downmixed first where mono was asked)."""
        self.reserve(block.size)
        self.counted += block.size
        n = block.shape[1]
        if self.frames + n > self.limits.max_seconds * self.rate:
            raise too_long(self.limits.max_seconds, self.limits.max_seconds, at_least=True)
        kept = np.ascontiguousarray(block, dtype=np.float32)
        if self.limits.mono:
            kept = downmix(torch.from_numpy(kept)).numpy()[None]
        if self._stream is not None:
            self._stream.feed(torch.from_numpy(kept[0]))
            self.frames += n
            return
        buffer = self._buffer
        if buffer is not None and not self._blocks and self.frames + n <= buffer.shape[1]:
            buffer[:, self.frames : self.frames + n] = kept
        else:
            self._blocks.append(kept)
        self.frames += n

    def result(self) -> tuple[Tensor, int]:
        """``([C or 1, frames]`` contiguous float32, its rate)."""
        if self._stream is not None:
            return self._stream.finish()[None], self._stream.target
        return torch.from_numpy(self._joined()), self.rate

    def _joined(self) -> np.ndarray:
        parts = list(self._blocks)
        if self._buffer is not None:
            filled = self.frames - sum(b.shape[1] for b in parts)
            parts.insert(0, self._buffer[:, :filled])
        if len(parts) == 1:
            return np.ascontiguousarray(parts[0])
        rows = 1 if self.limits.mono else self.channels
        if not parts:
            return np.zeros((rows, 0), np.float32)
        return np.concatenate(parts, axis=1)


def check_header_budget(
    channels: int, rate: int, frames: float, limits: DecodeLimits, *, at_least: bool = False
) -> None:
    """Refuse, before decoding, audio whose header already promises more than the budget."""
    budget = limits.max_samples
    if budget is not None and channels * frames > budget:
        raise too_large(channels, rate, int(channels * frames), budget, at_least=at_least)
