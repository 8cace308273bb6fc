"""Resampling in bounded memory: ``torchaudio.functional.resample`` (its defaults), fed block by
block.

torchaudio pads a copy of its whole input and convolves it in one call (about 1.7 times the input
in temporaries), and a decoder would have to hold the whole waveform at its own rate first. Here
the input is cut into pieces of about :data:`RESAMPLE_CHUNK` samples at fixed positions, each
resampled with enough real context on either side that every kept output reads exactly the
samples it reads in the whole-array call (the conv kernel reaches ``width + orig`` samples around
its position). The pieces depend only on absolute positions, so feeding an array whole or block
by block gives the same result bit for bit; inputs of at most :data:`RESAMPLE_CHUNK` samples take
torchaudio's whole-array call unchanged.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import Tensor

RESAMPLE_CHUNK = 1 << 18
"""Inputs longer than this (samples) are resampled in pieces of about this many: torchaudio's
convolution unfolds its input to about ``kernel / stride`` times its size (13 x from 384 kHz to
16 kHz), so a piece of 1 MiB costs about 14 MiB of temporaries."""
_LOWPASS_WIDTH = 6  # torchaudio.functional.resample's defaults: zero crossings of the sinc
_ROLLOFF = 0.99  # and the fraction of the Nyquist rate kept


def resample(mono: Tensor, sample_rate: int, target_rate: int) -> Tensor:
    """``torchaudio.functional.resample(mono, sample_rate, target_rate)`` of a ``[N]`` float
    waveform, in pieces when it is long (the same as feeding it to :class:`StreamResampler`)."""
    stream = StreamResampler(sample_rate, target_rate, expected=mono.shape[0])
    stream.feed(mono)
    return stream.finish()


class StreamResampler:
    """Resample a ``[N]`` float waveform fed in blocks; :meth:`finish` returns the output.

    Holds at most about ``RESAMPLE_CHUNK`` input samples plus context, and the output.

    Args:
        sample_rate: rate of the input.
        target_rate: rate of the output.
        expected: input length if known (the output is then allocated once).
    """

    def __init__(self, sample_rate: int, target_rate: int, expected: int | None = None) -> None:
        self.rate, self.target = sample_rate, target_rate
        g = math.gcd(sample_rate, target_rate)
        self.step_in, self.step_out = sample_rate // g, target_rate // g  # one conv position
        reach = math.ceil(
            _LOWPASS_WIDTH * self.step_in / (min(self.step_in, self.step_out) * _ROLLOFF)
        )
        self.context = self.step_in * (math.ceil((reach + self.step_in) / self.step_in) + 1)
        self.stride = self.step_in * max(1, RESAMPLE_CHUNK // self.step_in)
        self._held: list[Tensor] = []  # input from position self._held_from on
        self._held_from = 0
        self._fed = 0
        self._next = 0  # start of the next piece (input position)
        self._out: list[Tensor] = []
        self._written = 0
        total = None if expected is None else -(-expected * self.step_out // self.step_in)
        self._buffer = None if total is None or total == 0 else torch.empty(total)

    def feed(self, block: Tensor) -> None:
        """Take the next ``[n]`` input samples; resample every piece they complete."""
        if block.numel() == 0:
            return
        self._held.append(block)
        self._fed += block.shape[0]
        while self._fed >= self._next + self.stride + self.context:
            self._piece(self._next + self.stride, self._next + self.stride + self.context)

    def finish(self) -> Tensor:
        """The whole output: ``ceil(N * target / rate)`` samples."""
        n = self._fed
        if self._next == 0 and n <= RESAMPLE_CHUNK:  # short: torchaudio's own call
            whole = torch.cat(self._held) if len(self._held) != 1 else self._held[0]
            self._held = []
            if n == 0:
                return whole.new_empty(0)
            return torchaudio.functional.resample(whole, self.rate, self.target)
        while self._next < n:
            stop = min(self._next + self.stride, n)
            self._piece(stop, min(n, stop + self.context))
        buffer, self._buffer = self._buffer, None
        if buffer is not None and not self._out and self._written == buffer.shape[0]:
            return buffer  # the expected length arrived: allocated once, no join
        parts = ([buffer[: self._written]] if buffer is not None else []) + self._out
        self._out = []
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _piece(self, stop: int, hi: int) -> None:
        """Resample input ``[next, stop)`` (reading ``[next - context, hi)``) and keep it."""
        start = self._next
        lo = max(0, start - self.context)
        held = torch.cat(self._held) if len(self._held) != 1 else self._held[0]
        piece = torchaudio.functional.resample(
            held[lo - self._held_from : hi - self._held_from], self.rate, self.target
        )
        first = start // self.step_in * self.step_out
        if stop == self._fed:  # the end of the input: ceil(N * target / rate) in all
            last = -(-stop * self.step_out // self.step_in)
        else:
            last = stop // self.step_in * self.step_out
        skip = (start - lo) // self.step_in * self.step_out
        kept = piece[skip : skip + last - first]
        buffer = self._buffer
        if buffer is not None and not self._out and self._written + kept.shape[0] <= len(buffer):
            buffer[self._written : self._written + kept.shape[0]] = kept
            self._written += kept.shape[0]
        else:
            self._out.append(kept.clone())
        keep_from = max(0, stop - self.context)  # what the next piece reads
        self._held = [held[keep_from - self._held_from :]]
        self._held_from = keep_from
        self._next = stop
