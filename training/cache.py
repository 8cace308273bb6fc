"""On-disk feature cache: every clip is decoded once; later epochs read its fbank from disk.

Entries are keyed by the clip's *content* (sha256 of the file bytes, or of an HDF5 segment's
samples) plus the segment bounds and every feature setting that changes the fbank, never by path
alone (docs/design.md §5: same-name reloads served stale results elsewhere). Values are the
*unnormalised* padded fbank (normalisation is applied on read, so ``--compute-stats`` reuses the
cache) or, for datasets mixed with background noise, the 16 kHz mono waveform. Files are ``.npy``
read with ``allow_pickle=False``, written atomically (temp file + rename: workers may race on one
entry).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lookaside.features import (
    FRAME_LENGTH_MS,
    FRAME_SHIFT_MS,
    FeatureConfig,
    fbank,
    pad_or_crop,
    to_mono_16k,
)
from training.audio import read_clip
from training.datasets.base import Clip

Kind = Literal["fbank", "wave"]
CACHE_FORMAT = 1
"""Bumped when what an entry holds changes, so old entries are never misread."""


class FeatureCache:
    """Features of clips, computed once per (content, segment, feature config).

    Args:
        root: cache directory; None keeps nothing on disk (every read decodes).
        cfg: feature settings (mean / std are applied later and are not part of the key).
    """

    def __init__(self, root: Path | None, cfg: FeatureConfig) -> None:
        self.root = root
        self.cfg = cfg
        self.hits = 0
        self.misses = 0
        self._file_hash: dict[tuple[str, int, int], str] = {}
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    @property
    def window_seconds(self) -> float:
        """Audio one window needs (the fbank of more is cropped away)."""
        return ((self.cfg.target_frames - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 1000.0

    def content_hash(self, clip: Clip) -> str:
        """sha256 of what the clip's audio is made of (memoised per file for this process)."""
        if clip.h5_key is not None:
            wave, _ = read_clip(clip, self.cfg.max_seconds)
            return hashlib.sha256(wave.numpy().tobytes()).hexdigest()
        stat = clip.path.stat()
        memo = (str(clip.path), stat.st_size, stat.st_mtime_ns)
        digest = self._file_hash.get(memo)
        if digest is None:
            h = hashlib.sha256()
            with clip.path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = self._file_hash[memo] = h.hexdigest()
        return digest

    def key(self, clip: Clip, kind: Kind) -> str:
        """Cache key of one clip's entry."""
        spec = {
            "format": CACHE_FORMAT,
            "kind": kind,
            "content": self.content_hash(clip),
            "segment": [clip.start_s, clip.end_s, clip.start_sample, clip.stop_sample],
            "sample_rate": self.cfg.sample_rate,
            "num_mel_bins": self.cfg.num_mel_bins,
            "target_frames": self.cfg.target_frames,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def fbank(self, clip: Clip) -> Tensor:
        """Unnormalised ``[target_frames, mel]`` fbank of the clip (end padded or cropped)."""
        return self._get(clip, "fbank")

    def wave(self, clip: Clip) -> Tensor:
        """16 kHz mono waveform of the clip, cropped to one window."""
        return self._get(clip, "wave")

    def _get(self, clip: Clip, kind: Kind) -> Tensor:
        path = None
        if self.root is not None:
            key = self.key(clip, kind)
            path = self.root / key[:2] / f"{key}.npy"
            if path.is_file():
                self.hits += 1
                return torch.from_numpy(np.load(path, allow_pickle=False))
        self.misses += 1
        value = self._compute(clip, kind)
        if path is not None:
            _save_atomic(path, value.numpy())
        return value

    def _compute(self, clip: Clip, kind: Kind) -> Tensor:
        # The whole clip goes through the fbank, as the service's extract() does: fbank removes
        # the waveform's mean, so cropping first would change the features.
        wave, rate = read_clip(clip, self.cfg.max_seconds)
        mono = to_mono_16k(wave, rate, self.cfg.sample_rate)
        needed = int(self.window_seconds * self.cfg.sample_rate) + 1
        if kind == "wave":
            mono = mono[:needed]
        window = int(FRAME_LENGTH_MS * self.cfg.sample_rate / 1000)
        if mono.shape[0] < window:  # shorter than one analysis window: pad it to one
            mono = torch.nn.functional.pad(mono, (0, window - mono.shape[0]))
        if kind == "wave":
            return mono.contiguous()
        fb = fbank(mono, self.cfg.num_mel_bins, self.cfg.sample_rate)
        return pad_or_crop(fb, self.cfg.target_frames).contiguous()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
