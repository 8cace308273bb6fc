"""Audio in, normalised log-mel fbank out: the AST recipe, shared by training and serving so the
two cannot drift.

Recipe (Gong et al., "AST: Audio Spectrogram Transformer", Interspeech 2021, §2.1 and its
reference code; docs/design.md §1): 16 kHz mono -> subtract the waveform mean -> Kaldi-compatible
fbank (``torchaudio.compliance.kaldi.fbank``: 25 ms Hanning window, 10 ms hop, 128 mel bins,
no dither, no energy) -> zero-pad or crop to the task's frame count -> ``(x - mean) / (2 * std)``
with the AudioSet statistics. Zero padding comes before normalisation, as in AST and transformers'
``ASTFeatureExtractor`` (the reference our tests compare against).

Pipeline: bytes -> :func:`lookaside.decode.decode_audio` (its own module: the service and the
datasets both decode) -> :func:`to_mono_16k` -> :func:`fbank` -> :func:`pad_or_crop`
or :func:`sliding_windows` -> :func:`normalise`; :func:`extract` and :func:`extract_windows` run
it from a waveform. Training-only augmentation (SpecAugment, mixup) works on the same
``[frames, mel]`` tensors and lives in :mod:`training.augment`.

Audio-visual clips (AV-PEA): :func:`segment_features` cuts the whole clip's fbank into one window
per second, and :func:`frames_to_pixels` turns RGB frames into backbone pixels (resized to the
backbone's image size, ImageNet mean / std).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchaudio
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from lookaside.decode import check_sample_rate, check_values, downmix
from lookaside.errors import BadAudio, ConfigError
from lookaside.resample import resample

SAMPLE_RATE = 16_000
FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974
_MAX_CHANNELS = 64  # more "channels" than this is a [samples, channels] array passed transposed
FBANK_CHUNK_FRAMES = 1024
"""Clips with more fbank frames than this (10.24 s at 16 kHz) are computed this many frames at a
time; shorter ones in one call."""


class FeatureConfig(BaseModel):
    """How an adapter's inputs are featurised. Stored in its checkpoint, so serving reproduces
    training exactly; invalid values raise pydantic's ``ValidationError`` (a ``ValueError``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    sample_rate: int = Field(SAMPLE_RATE, gt=0)
    """Rate (Hz) the waveform is resampled to before the fbank; AST uses 16 kHz."""
    num_mel_bins: int = Field(128, gt=0)
    """Mel bins, i.e. the spectrogram's height (AST: 128)."""
    target_frames: int = Field(1024, gt=0)
    """Frames (10 ms each) per window: ESC-50 512, Speech Commands 128, AudioSet 1024."""
    mean: float = Field(AUDIOSET_MEAN, allow_inf_nan=False)
    """Mean of the log-mel values used for normalisation (AudioSet statistics by default)."""
    std: float = Field(AUDIOSET_STD, gt=0, allow_inf_nan=False)
    """Standard deviation for normalisation; features are divided by ``2 * std`` as in AST."""
    window_hop_frames: int | None = Field(None, gt=0)
    """Hop between sliding windows over long clips; None means ``target_frames`` (no overlap)."""
    max_seconds: float = Field(600.0, gt=0, allow_inf_nan=False)
    """Longest input accepted, so one upload cannot exhaust memory."""

    @model_validator(mode="after")
    def _hop_covers_the_clip(self) -> FeatureConfig:
        if self.window_hop_frames is not None and self.window_hop_frames > self.target_frames:
            raise ValueError(
                f"window_hop_frames ({self.window_hop_frames}) exceeds target_frames "
                f"({self.target_frames}), so windows would skip audio; use a hop <= target_frames"
            )
        return self

    @property
    def hop_frames(self) -> int:
        """Effective hop between sliding windows, in frames."""
        return self.window_hop_frames or self.target_frames

    @property
    def window_seconds(self) -> float:
        """Duration one window covers."""
        return self.target_frames * FRAME_SHIFT_MS / 1000.0


class Windows(NamedTuple):
    """Fixed-length windows over one clip, so long audio is classified piece by piece."""

    features: Tensor
    """``[num_windows, frames, mel]``."""
    start_seconds: Tensor
    """``[num_windows]`` float64 start time of each window in the clip."""


# -- waveform ---------------------------------------------------------------------------------
def _as_float(wave: Tensor) -> Tensor:
    """Float32 in [-1, 1]: integer PCM is scaled by its full range, as soundfile does."""
    if wave.dtype == torch.bool or wave.is_complex():
        raise BadAudio("unsupported", f"audio samples must be real numbers, not {wave.dtype}")
    if wave.dtype == torch.uint8:  # 8-bit PCM is offset binary: 128 is silence
        return (wave.to(torch.float32) - 128.0) / 128.0
    if not wave.is_floating_point():
        return wave.to(torch.float32) / float(-torch.iinfo(wave.dtype).min)
    return wave.to(torch.float32)


def to_mono_16k(wave: Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE) -> Tensor:
    """``[N]`` or ``[C, N]`` audio of any rate and dtype -> float32 mono ``[M]`` at ``target_rate``.

    Channels are averaged (AST's recipe is mono; :func:`~lookaside.decode.downmix`, the same
    arithmetic the decoder uses when it downmixes while decoding); integer PCM is scaled to
    [-1, 1). A rate no recording has is refused before resampling (``bad_rate``): resampling
    work grows with the ratio of the rates.
    """
    if sample_rate <= 0 or target_rate <= 0:
        raise ConfigError(f"sample rates must be positive, got {sample_rate} -> {target_rate}")
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise BadAudio(
            "unsupported", f"expected [samples] or [channels, samples], got {tuple(wave.shape)}"
        )
    if wave.shape[0] > _MAX_CHANNELS:
        raise BadAudio(
            "unsupported",
            f"{wave.shape[0]} channels is implausible: pass [channels, samples], "
            f"not [samples, channels] (transpose it)",
        )
    check_sample_rate(sample_rate)
    mono = downmix(_as_float(wave))
    if sample_rate != target_rate:
        mono = resample(mono, sample_rate, target_rate)
    return mono.contiguous()


# -- fbank ------------------------------------------------------------------------------------
def fbank(wave16k: Tensor, num_mel_bins: int = 128, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Kaldi-compatible log-mel fbank ``[frames, mel]`` of a mono waveform, with AST's settings.

    The waveform mean is subtracted first, as AST does; transformers' ``ASTFeatureExtractor``
    skips that step, which gives the same result because Kaldi also removes each frame's DC offset.
    Frames follow Kaldi's ``snip_edges``: ``1 + (N - 400) // 160`` at 16 kHz. Clips longer than
    :data:`FBANK_CHUNK_FRAMES` frames are computed that many frames at a time (each frame reads
    only its own window, so the result is the same up to float rounding in Kaldi's FFT and
    matrix products), keeping Kaldi's ``[frames, 512]`` working arrays small.
    """
    return _fbank(wave16k, num_mel_bins, sample_rate, rows=0)


def _fbank(wave16k: Tensor, num_mel_bins: int, sample_rate: int, *, rows: int) -> Tensor:
    """:func:`fbank` as ``[max(frames, rows), mel]``: rows past the clip's frames are zeros (AST
    pads with zeros), so windows without overlap are a view of it, not a padded copy."""
    if wave16k.dim() == 2 and wave16k.shape[0] == 1:
        wave16k = wave16k[0]
    if wave16k.dim() != 1:
        raise BadAudio(
            "unsupported",
            f"fbank takes mono [samples], got {tuple(wave16k.shape)}; call to_mono_16k first",
        )
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    if wave16k.shape[0] < window:
        raise BadAudio(
            "too_short",
            f"the audio has {wave16k.shape[0]} samples, fewer than one {FRAME_LENGTH_MS:g} ms "
            f"analysis window ({window}); upload at least {FRAME_LENGTH_MS:g} ms of audio",
        )
    wave = _as_float(wave16k)
    mean = wave.mean()
    count = num_frames(wave.shape[0], sample_rate)
    if count <= FBANK_CHUNK_FRAMES:
        whole = _kaldi_fbank(wave - mean, num_mel_bins, sample_rate)
        return pad_or_crop(whole, rows) if rows > count else whole
    shift, length = _frame_geometry(sample_rate)
    out = torch.empty(max(count, rows), num_mel_bins)
    out[count:] = 0
    for first in range(0, count, FBANK_CHUNK_FRAMES):
        last = min(first + FBANK_CHUNK_FRAMES, count)
        piece = wave[first * shift : (last - 1) * shift + length]
        out[first:last] = _kaldi_fbank(piece - mean, num_mel_bins, sample_rate)
    return out


def _kaldi_fbank(centred: Tensor, num_mel_bins: int, sample_rate: int) -> Tensor:
    return torchaudio.compliance.kaldi.fbank(
        centred.unsqueeze(0),
        htk_compat=True,
        sample_frequency=float(sample_rate),
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
        frame_length=FRAME_LENGTH_MS,
    )


def _frame_geometry(sample_rate: int) -> tuple[int, int]:
    """(shift, length) of an analysis window in samples, computed as Kaldi's fbank does."""
    return (
        int(sample_rate * FRAME_SHIFT_MS * 0.001),
        int(sample_rate * FRAME_LENGTH_MS * 0.001),
    )


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Fbank frames of ``num_samples`` mono samples (Kaldi's ``snip_edges``; 0 if too short)."""
    shift, length = _frame_geometry(sample_rate)
    return 0 if num_samples < length else 1 + (num_samples - length) // shift


def resampled_length(num_samples: int, sample_rate: int, target_rate: int) -> int:
    """Samples :func:`to_mono_16k` returns for ``num_samples`` at ``sample_rate``."""
    if sample_rate == target_rate:
        return num_samples
    return -(-num_samples * target_rate // sample_rate)  # torchaudio: ceil(N * new / orig)


def window_count(num_samples: int, sample_rate: int, cfg: FeatureConfig) -> int:
    """Windows :func:`extract_windows` makes of ``num_samples`` frames at ``sample_rate``,
    by arithmetic alone, so a request's work is known before any feature is computed."""
    frames = num_frames(
        resampled_length(num_samples, sample_rate, cfg.sample_rate), cfg.sample_rate
    )
    return (
        1 if frames <= cfg.target_frames else -(-(frames - cfg.target_frames) // cfg.hop_frames) + 1
    )


def normalise(fb: Tensor, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD) -> Tensor:
    """AST normalisation ``(fb - mean) / (2 * std)``: roughly zero mean, 0.5 std on AudioSet."""
    return (fb - mean) / (2 * std)


def pad_or_crop(fb: Tensor, frames: int) -> Tensor:
    """Zero-pad at the end or crop the end so ``fb`` has exactly ``frames`` rows (AST's rule)."""
    if frames <= 0:
        raise ConfigError(f"frames must be positive, got {frames}")
    n = fb.shape[0]
    if n >= frames:
        return fb[:frames]
    return torch.nn.functional.pad(fb, (0, 0, 0, frames - n))


def sliding_windows(fb: Tensor, frames: int, hop: int) -> Windows:
    """Windows of ``frames`` rows every ``hop`` rows, covering the whole clip.

    The last window is zero-padded at the end; a clip shorter than one window gives one padded
    window. ``hop <= frames`` so no audio is skipped. The windows are written once into their
    output (no padded copy of the whole fbank).
    """
    if frames <= 0 or not 0 < hop <= frames:
        raise ConfigError(f"need 0 < hop <= frames, got frames={frames}, hop={hop}")
    n = fb.shape[0]
    count = 1 if n <= frames else math.ceil((n - frames) / hop) + 1
    features = fb.new_empty((count, frames, *fb.shape[1:]))
    whole = 0 if n < frames else min(count, (n - frames) // hop + 1)  # windows inside the clip
    if whole:
        features[:whole] = fb.unfold(0, frames, hop)[:whole].movedim(-1, 1)
    for i in range(whole, count):  # windows that run past the end: at most frames / hop
        real = max(0, min(frames, n - i * hop))
        features[i, :real] = fb[i * hop : i * hop + real]
        features[i, real:] = 0
    start_seconds = torch.arange(count, dtype=torch.float64) * (hop * FRAME_SHIFT_MS / 1000.0)
    return Windows(features, start_seconds)


def _fbank_of(wave: Tensor, sample_rate: int, cfg: FeatureConfig) -> Tensor:
    return fbank(_mono_of(wave, sample_rate, cfg), cfg.num_mel_bins, cfg.sample_rate)


def _mono_of(wave: Tensor, sample_rate: int, cfg: FeatureConfig) -> Tensor:
    check_values(wave, sample_rate, cfg.max_seconds)
    return to_mono_16k(wave, sample_rate, cfg.sample_rate)


def extract(wave: Tensor, sample_rate: int, cfg: FeatureConfig) -> Tensor:
    """One normalised window ``[target_frames, mel]`` of a clip (end padded or cropped).

    Args:
        wave: ``[N]`` or ``[C, N]`` audio, float or integer PCM, any rate.
        sample_rate: rate of ``wave`` in Hz.
        cfg: the adapter's feature settings.
    """
    padded = pad_or_crop(_fbank_of(wave, sample_rate, cfg), cfg.target_frames)
    return normalise(padded, cfg.mean, cfg.std)


def extract_windows(wave: Tensor, sample_rate: int, cfg: FeatureConfig) -> Windows:
    """All normalised windows of a clip, ``cfg.hop_frames`` apart, for clips longer than one.

    :func:`sliding_windows` then :func:`normalise`, computed without copies of the clip's fbank:
    windows without overlap are a view of the zero-padded fbank, and the normalisation is done
    in place (the same arithmetic).
    """
    frames = cfg.target_frames
    if cfg.hop_frames == frames:
        mono = _mono_of(wave, sample_rate, cfg)
        count = max(1, math.ceil(num_frames(mono.shape[0], cfg.sample_rate) / frames))
        fb = _fbank(mono, cfg.num_mel_bins, cfg.sample_rate, rows=count * frames)
        starts = torch.arange(count, dtype=torch.float64) * (frames * FRAME_SHIFT_MS / 1000.0)
        windows = Windows(fb[: count * frames].view(count, frames, fb.shape[1]), starts)
    else:
        windows = sliding_windows(_fbank_of(wave, sample_rate, cfg), frames, cfg.hop_frames)
    windows.features.sub_(cfg.mean).div_(2 * cfg.std)
    return windows


# -- audio-visual segments --------------------------------------------------------------------
FRAMES_PER_SECOND = round(1000 / FRAME_SHIFT_MS)
"""Fbank frames per second of audio (10 ms hop): the hop between one-second segments."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def segment_features(wave: Tensor, sample_rate: int, cfg: FeatureConfig, seconds: int) -> Tensor:
    """One normalised window per second of a clip, ``[seconds, target_frames, mel]``.

    The fbank is computed over the whole clip once (as :func:`extract` does), then window ``s``
    starts at second ``s`` (``FRAMES_PER_SECOND`` frames apart) and spans ``cfg.target_frames``
    frames (100 frames = exactly one second); audio missing at the end is zero-padded before
    normalisation, as AST pads.
    """
    if seconds < 1:
        raise ConfigError(f"a clip has at least one segment, got seconds={seconds}")
    fb = _fbank_of(wave, sample_rate, cfg)
    padded = pad_or_crop(fb, (seconds - 1) * FRAMES_PER_SECOND + cfg.target_frames)
    windows = padded.unfold(0, cfg.target_frames, FRAMES_PER_SECOND).transpose(1, 2)
    return normalise(windows.contiguous(), cfg.mean, cfg.std)


def frames_to_pixels(
    frames: Tensor,
    image_size: tuple[int, int],
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Tensor:
    """RGB frames ``[..., H, W, 3]`` (uint8, or float in [0, 1]) -> backbone pixels
    ``[..., 3, h, w]``: resized to ``image_size`` (bilinear, antialiased; the aspect ratio is not
    kept, as the AV-PEA and LAVISH recipes resize to 224 x 224) and normalised by ImageNet's
    per-channel mean and std (what the ViT saw in pre-training)."""
    if frames.dim() < 3 or frames.shape[-1] != 3:
        raise ConfigError(f"expected RGB frames [..., height, width, 3], got {tuple(frames.shape)}")
    lead, (height, width) = frames.shape[:-3], frames.shape[-3:-1]
    x = frames.reshape(-1, height, width, 3).permute(0, 3, 1, 2)
    x = x.float() / 255.0 if not x.is_floating_point() else x.float()
    if (height, width) != tuple(image_size):
        x = F.interpolate(
            x, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=True
        )
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).reshape(*lead, 3, image_size[0], image_size[1])
