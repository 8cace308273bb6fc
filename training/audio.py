"""Read one clip's samples: a whole file, a segment of one by offset, or an HDF5 sample range."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from lookaside.decode import decode_audio
from training.datasets.base import Clip, DatasetError

MAX_FILE_SECONDS = 4 * 3600.0
"""Longest whole file decoded for a segment when the format cannot seek (e.g. MP3)."""


def read_clip(clip: Clip, max_seconds: float) -> tuple[Tensor, int]:
    """``([channels, samples] float32, sample rate)``, at most ``max_seconds`` long.

    Segments are read by offset (soundfile seeks in WAV/FLAC/Ogg; HDF5 slices), so a segment of a
    long recording never loads the whole recording.
    """
    if clip.h5_key is not None:
        return _read_h5(clip, max_seconds)
    if clip.start_s is None and clip.end_s is None:
        try:
            wave, rate = decode_audio(clip.path.read_bytes(), max_seconds=MAX_FILE_SECONDS)
        except OSError as exc:
            raise DatasetError(f"cannot read {clip.path}: {exc}") from None
        return wave[:, : int(max_seconds * rate) + 1], rate
    start_s = clip.start_s or 0.0
    end_s = clip.end_s if clip.end_s is not None else start_s + max_seconds
    end_s = min(end_s, start_s + max_seconds)
    try:
        rate = sf.info(str(clip.path)).samplerate
        data, rate = sf.read(
            str(clip.path),
            start=int(start_s * rate),
            stop=int(np.ceil(end_s * rate)),
            dtype="float32",
            always_2d=True,
        )
        wave = torch.from_numpy(np.ascontiguousarray(data.T))
    except sf.LibsndfileError:  # a format soundfile cannot seek in: decode it all, then cut
        full, rate = decode_audio(clip.path.read_bytes(), max_seconds=MAX_FILE_SECONDS)
        wave = full[:, int(start_s * rate) : int(np.ceil(end_s * rate))]
    if wave.shape[1] == 0:
        raise DatasetError(f"{clip.path}: segment {start_s}-{end_s} s is past the end of the file")
    return wave, rate


def _read_h5(clip: Clip, max_seconds: float) -> tuple[Tensor, int]:
    import h5py

    assert clip.start_sample is not None
    assert clip.stop_sample is not None
    rate = clip.sample_rate or 24_000
    stop = min(clip.stop_sample, clip.start_sample + int(max_seconds * rate) + 1)
    with h5py.File(clip.path, "r") as f:
        data = np.asarray(f[clip.h5_key][clip.start_sample : stop])
    if data.size == 0:
        raise DatasetError(
            f"{clip.path}[{clip.h5_key}]: samples {clip.start_sample}-{clip.stop_sample} are past "
            "the end of the recording"
        )
    wave = torch.from_numpy(data.astype(np.float32) if data.dtype.kind == "f" else data)
    wave = wave.unsqueeze(0) if wave.dim() == 1 else wave.T  # stored [samples, channels]
    return wave.contiguous(), rate
