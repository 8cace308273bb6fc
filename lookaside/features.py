"""Audio in, normalised log-mel fbank out: the AST recipe (Gong et al., 2021), shared by training
and serving so the two cannot drift.

Pipeline: bytes -> :func:`decode_audio` (soundfile for WAV/FLAC/Ogg, PyAV/FFmpeg for MP3, AAC, M4A
and the audio track of videos) -> :func:`to_mono_16k` (channel mean, torchaudio resampling) ->
:func:`fbank` (Kaldi-compatible 128-bin log-mel, 25 ms Hanning window, 10 ms hop) ->
:func:`normalise` ``(x - mean) / (2 * std)`` with AudioSet statistics by default -> fixed-length
windows (:func:`pad_or_crop`, :func:`sliding_windows`). Zero padding is applied before
normalisation, as in AST and transformers' ``ASTFeatureExtractor``.

Training helpers (:class:`SpecAugment`, :func:`mixup`) work on the same ``[frames, mel]`` tensors.
"""

from __future__ import annotations

import io
import struct
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from lookaside.errors import BadAudio, ConfigError

SAMPLE_RATE = 16_000
FRAME_SHIFT_MS = 10.0
WINDOW_MS = 25.0
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974
_SUPPORTED = "upload WAV, FLAC, Ogg/Opus, MP3 or AAC/M4A audio (or a video with a sound track)"


class FeatureConfig(BaseModel):
    """How an adapter's inputs are featurised; stored in its checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int = Field(SAMPLE_RATE, gt=0)
    """Rate the waveform is resampled to before the fbank."""
    num_mel_bins: int = Field(128, gt=0)
    """Mel bins (spectrogram height)."""
    target_frames: int = Field(1024, gt=0)
    """Frames per window (10 ms each): ESC-50 512, Speech Commands 128, AudioSet 1024."""
    mean: float = AUDIOSET_MEAN
    """Normalisation mean of the log-mel values."""
    std: float = Field(AUDIOSET_STD, gt=0)
    """Normalisation standard deviation (features are divided by 2 * std, as in AST)."""
    window_hop_frames: int | None = Field(None, gt=0)
    """Hop between sliding windows over long clips; None means non-overlapping windows."""
    max_seconds: float = Field(600.0, gt=0)
    """Longest input accepted."""

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        if self.window_hop_frames is not None and self.window_hop_frames > self.target_frames:
            raise ConfigError(
                f"window_hop_frames {self.window_hop_frames} exceeds target_frames "
                f"{self.target_frames}: windows would skip audio"
            )
        return self

    @property
    def hop_frames(self) -> int:
        """Effective hop between windows."""
        return self.window_hop_frames or self.target_frames

    @property
    def window_seconds(self) -> float:
        """Duration one window covers."""
        return self.target_frames * FRAME_SHIFT_MS / 1000.0


class Windows(NamedTuple):
    """Fixed-length windows over one clip."""

    features: Tensor
    """``[num_windows, frames, mel]``."""
    start_seconds: Tensor
    """``[num_windows]`` start time of each window."""


# -- waveform ---------------------------------------------------------------------------------
def to_mono_16k(wave: Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE) -> Tensor:
    """``[N]`` or ``[C, N]`` audio of any rate and dtype -> float32 mono at ``target_rate``.

    Integer PCM is scaled to [-1, 1); channels are averaged.
    """
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise BadAudio(
            "unsupported", f"expected [samples] or [channels, samples], got {tuple(wave.shape)}"
        )
    if not wave.is_floating_point():
        info = torch.iinfo(wave.dtype)
        wave = wave.to(torch.float32) / float(-info.min)
    mono = wave.to(torch.float32).mean(dim=0)
    if sample_rate != target_rate:
        mono = torchaudio.functional.resample(mono, sample_rate, target_rate)
    return mono


def _check_values(wave: Tensor, sample_rate: int, max_seconds: float) -> None:
    if wave.numel() == 0:
        raise BadAudio("empty", f"the audio has no samples; {_SUPPORTED}")
    if not torch.isfinite(wave).all():
        raise BadAudio("bad_values", "the audio contains NaN or infinite samples")
    seconds = wave.shape[-1] / sample_rate
    if seconds > max_seconds:
        raise BadAudio(
            "too_long", f"the audio lasts {seconds:.1f} s; the limit is {max_seconds:g} s"
        )


# -- fbank ------------------------------------------------------------------------------------
def fbank(wave16k: Tensor, num_mel_bins: int = 128, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Kaldi-compatible log-mel fbank ``[frames, mel]`` of a mono waveform (AST's settings)."""
    if wave16k.shape[-1] < int(sample_rate * WINDOW_MS / 1000):
        raise BadAudio(
            "too_short",
            f"the audio is shorter than one {WINDOW_MS:g} ms analysis window",
        )
    wave = wave16k.reshape(1, -1).to(torch.float32)
    wave = wave - wave.mean()
    return torchaudio.compliance.kaldi.fbank(
        wave,
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
    )


def normalise(fb: Tensor, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD) -> Tensor:
    """AST normalisation ``(fb - mean) / (2 * std)``."""
    return (fb - mean) / (2 * std)


def pad_or_crop(fb: Tensor, frames: int) -> Tensor:
    """Zero-pad at the end or crop to ``frames`` rows."""
    n = fb.shape[0]
    if n >= frames:
        return fb[:frames]
    return torch.nn.functional.pad(fb, (0, 0, 0, frames - n))


def sliding_windows(fb: Tensor, frames: int, hop: int) -> Windows:
    """Windows of ``frames`` rows every ``hop`` rows covering the whole clip (last one padded)."""
    if hop <= 0 or frames <= 0:
        raise ConfigError("frames and hop must be positive")
    n = fb.shape[0]
    starts = [0] if n <= frames else list(range(0, n - frames + hop, hop))
    starts = [s for s in starts if s < n] or [0]
    windows = torch.stack([pad_or_crop(fb[s : s + frames], frames) for s in starts])
    start_seconds = torch.tensor(starts, dtype=torch.float32) * (FRAME_SHIFT_MS / 1000.0)
    return Windows(windows, start_seconds)


def _fbank_of(wave: Tensor, sample_rate: int, cfg: FeatureConfig) -> Tensor:
    _check_values(wave, sample_rate, cfg.max_seconds)
    mono = to_mono_16k(wave, sample_rate, cfg.sample_rate)
    return fbank(mono, cfg.num_mel_bins, cfg.sample_rate)


def extract(wave: Tensor, sample_rate: int, cfg: FeatureConfig) -> Tensor:
    """One normalised window ``[target_frames, mel]`` (padded or cropped at the end)."""
    padded = pad_or_crop(_fbank_of(wave, sample_rate, cfg), cfg.target_frames)
    return normalise(padded, cfg.mean, cfg.std)


def extract_windows(wave: Tensor, sample_rate: int, cfg: FeatureConfig) -> Windows:
    """All normalised windows of a clip, ``cfg.hop_frames`` apart."""
    windows = sliding_windows(_fbank_of(wave, sample_rate, cfg), cfg.target_frames, cfg.hop_frames)
    return Windows(normalise(windows.features, cfg.mean, cfg.std), windows.start_seconds)


# -- training helpers -------------------------------------------------------------------------
class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019) on ``[frames, mel]`` or ``[B, frames, mel]``.

    Identity in eval mode. Masks are filled with 0, which is the normalised mean region.
    """

    def __init__(
        self,
        freq_mask: int = 48,
        time_mask: int = 192,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
    ) -> None:
        super().__init__()
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)
        self.num_freq_masks = num_freq_masks
        self.num_time_masks = num_time_masks

    def forward(self, spec: Tensor) -> Tensor:
        if not self.training:
            return spec
        single = spec.dim() == 2
        # torchaudio masks (..., freq, time) with iid masks per item of a 3-D+ batch.
        x = (spec.unsqueeze(0) if single else spec).transpose(-1, -2).unsqueeze(1)
        for _ in range(self.num_freq_masks):
            x = self.freq(x)
        for _ in range(self.num_time_masks):
            x = self.time(x)
        out = x.squeeze(1).transpose(-1, -2)
        return out.squeeze(0) if single else out


def mixup(
    x: Tensor, y: Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float]:
    """Mix each example with a random partner: ``lam * a + (1 - lam) * b`` for inputs and targets.

    Args:
        x: ``[B, ...]`` inputs; y: ``[B, classes]`` one-hot or soft targets.
        alpha: Beta(alpha, alpha) parameter; ``alpha <= 0`` returns the inputs unchanged.
    """
    if alpha <= 0:
        return x, y, 1.0
    # torch's Beta takes no generator: seed numpy's from it so runs stay reproducible.
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator, device="cpu").to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam


# -- decoding ---------------------------------------------------------------------------------
def decode_audio(data: bytes, *, max_seconds: float = 600.0) -> tuple[Tensor, int]:
    """Uploaded bytes -> (``[channels, samples]`` float32, sample rate).

    soundfile (libsndfile) reads WAV, FLAC and Ogg; anything else goes through PyAV (FFmpeg), which
    also takes the audio track of video containers. Raises :class:`BadAudio` with reason
    ``empty``, ``not_audio``, ``truncated`` or ``too_long``.
    """
    if not data:
        raise BadAudio("empty", f"the upload is empty; {_SUPPORTED}")
    _check_wav_header(data)
    try:
        wave, rate = _decode_soundfile(data, max_seconds)
    except _NotForSoundfile:
        wave, rate = _decode_pyav(data, max_seconds)
    if wave.shape[1] == 0:
        raise BadAudio("empty", "the file decodes to zero samples")
    return wave, rate


class _NotForSoundfile(Exception):
    """libsndfile does not recognise the format: try FFmpeg."""


def _check_wav_header(data: bytes) -> None:
    """A RIFF/WAVE whose data chunk is shorter than its header says was cut off in transfer.

    libsndfile silently shortens such files, so this is checked on the raw bytes.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = (
            data[offset : offset + 4],
            struct.unpack("<I", data[offset + 4 : offset + 8])[0],
        )
        if chunk_id == b"data":
            available = len(data) - (offset + 8)
            if size not in (0, 0xFFFFFFFF) and available < size:
                raise BadAudio(
                    "truncated",
                    f"the WAV file is truncated: its header promises {size} bytes of audio but "
                    f"only {available} arrived; upload the complete file",
                )
            return
        offset += 8 + size + (size & 1)
    if offset > len(data) or data[:4] == b"RIFF":
        raise BadAudio(
            "truncated", "the WAV file ends before its audio data; upload the whole file"
        )


def _decode_soundfile(data: bytes, max_seconds: float) -> tuple[Tensor, int]:
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _NotForSoundfile from exc
    if info.frames > 0 and info.frames / info.samplerate > max_seconds:
        raise BadAudio(
            "too_long",
            f"the audio lasts {info.frames / info.samplerate:.1f} s; "
            f"the limit is {max_seconds:g} s",
        )
    try:
        array, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise BadAudio(
            "truncated", f"the {info.format} file is damaged or truncated: {exc}"
        ) from exc
    if 0 < array.shape[0] < info.frames:
        raise BadAudio(
            "truncated",
            f"the {info.format} file is truncated: "
            f"{array.shape[0]} of {info.frames} frames decoded",
        )
    return torch.from_numpy(np.ascontiguousarray(array.T)), int(rate)


def _decode_pyav(data: bytes, max_seconds: float) -> tuple[Tensor, int]:
    import av  # FFmpeg bindings; imported lazily (heavy, only for non-libsndfile formats)

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as exc:
        raise BadAudio(
            "not_audio", f"the upload is not a recognised audio format; {_SUPPORTED}"
        ) from exc
    with container:
        if not container.streams.audio:
            raise BadAudio("not_audio", f"the file has no audio track; {_SUPPORTED}")
        stream = container.streams.audio[0]
        if container.duration is not None and container.duration / 1e6 > max_seconds + 1:
            raise BadAudio(
                "too_long",
                f"the audio lasts {container.duration / 1e6:.1f} s; the limit is {max_seconds:g} s",
            )
        rate = int(stream.rate or stream.codec_context.sample_rate)
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray()
                    chunks.append(chunk)
                    total += chunk.shape[1]
                if total / rate > max_seconds:
                    raise BadAudio("too_long", f"the audio lasts more than {max_seconds:g} s")
        except av.error.FFmpegError as exc:
            if not chunks:
                raise BadAudio("not_audio", f"the audio track cannot be decoded: {exc}") from exc
            raise BadAudio("truncated", f"the audio stream is damaged or truncated: {exc}") from exc
    if not chunks:
        raise BadAudio("empty", "the file decodes to zero samples")
    array = np.concatenate(chunks, axis=1).astype(np.float32)
    return torch.from_numpy(array), rate
