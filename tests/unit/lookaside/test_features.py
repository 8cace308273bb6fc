"""Features: AST fbank against transformers' extractor, resampling, windows, decoding errors."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import ASTFeatureExtractor

from lookaside.errors import BadAudio
from lookaside.features import (
    FeatureConfig,
    SpecAugment,
    decode_audio,
    extract,
    extract_windows,
    mixup,
    sliding_windows,
    to_mono_16k,
)


def _chirp(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (300 * t + 400 * t**2)) + 0.05 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


@pytest.mark.parametrize(("seconds", "frames"), [(3.0, 200), (3.0, 512), (1.0, 128)])
def test_fbank_matches_ast_feature_extractor(seconds: float, frames: int) -> None:
    wave = _chirp(seconds)
    reference = ASTFeatureExtractor(
        sampling_rate=16_000, num_mel_bins=128, max_length=frames, do_normalize=True
    )(wave, sampling_rate=16_000, return_tensors="pt")["input_values"][0]
    ours = extract(torch.from_numpy(wave), 16_000, FeatureConfig(target_frames=frames))
    assert ours.shape == (frames, 128)
    assert (ours - reference).abs().max() <= 1e-3


def _dominant_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return float(spectrum.argmax()) * rate / wave.numel()


def test_to_mono_16k_downmixes_and_resamples() -> None:
    t = np.arange(44_100) / 44_100
    left = np.sin(2 * np.pi * 1000 * t)
    stereo = torch.from_numpy(np.stack([left, 0.5 * left])).float()
    mono = to_mono_16k(stereo, 44_100)
    assert mono.dtype == torch.float32
    assert mono.shape == (16_000,)
    assert abs(_dominant_hz(mono, 16_000) - 1000) < 5
    assert abs(mono.abs().max().item() - 0.75) < 0.02  # mean of the channels
    pcm = (stereo * 20000).to(torch.int16)
    torch.testing.assert_close(to_mono_16k(pcm, 44_100), mono * 20000 / 32768, atol=2e-3, rtol=0)


def test_sliding_windows_cover_the_clip() -> None:
    fb = torch.arange(250, dtype=torch.float32)[:, None].expand(-1, 4)
    windows = sliding_windows(fb, frames=100, hop=60)
    assert windows.features.shape == (4, 100, 4)  # starts 0, 60, 120, 180
    torch.testing.assert_close(windows.start_seconds, torch.tensor([0.0, 0.6, 1.2, 1.8]))
    assert windows.features[3, 69, 0] == 249  # last real frame
    assert (windows.features[3, 70:] == 0).all()  # padded tail
    short = sliding_windows(fb[:30], frames=100, hop=100)
    assert short.features.shape == (1, 100, 4)


def test_extract_windows_uses_config_hop() -> None:
    cfg = FeatureConfig(target_frames=100, window_hop_frames=50)
    windows = extract_windows(torch.from_numpy(_chirp(3.0)), 16_000, cfg)
    assert windows.features.shape[1:] == (100, 128)
    assert windows.features.shape[0] == 5  # 298 frames: starts 0, 50, ..., 200 reach the end
    torch.testing.assert_close(
        windows.features[1, :50], extract(torch.from_numpy(_chirp(3.0)), 16_000, cfg)[50:]
    )


def test_bad_values_and_limits() -> None:
    with pytest.raises(BadAudio) as info:
        extract(torch.tensor([0.0, float("nan")] * 800), 16_000, FeatureConfig())
    assert info.value.reason == "bad_values"
    with pytest.raises(BadAudio) as info:
        extract(torch.zeros(16_000 * 3), 16_000, FeatureConfig(max_seconds=2))
    assert info.value.reason == "too_long"
    with pytest.raises(BadAudio) as info:
        extract(torch.zeros(100), 16_000, FeatureConfig())
    assert info.value.reason == "too_short"


def test_specaugment_masks_in_train_and_not_in_eval() -> None:
    spec = torch.randn(4, 200, 128) + 5
    aug = SpecAugment(freq_mask=30, time_mask=50)
    aug.train()
    masked = aug(spec)
    assert masked.shape == spec.shape
    assert (masked == 0).any()
    assert (masked[0] == spec[0]).float().mean() > 0.5  # masks, not wipes
    aug.eval()
    assert torch.equal(aug(spec), spec)
    aug.train()
    assert aug(spec[0]).shape == spec[0].shape


def test_mixup_is_a_convex_combination() -> None:
    x = torch.randn(6, 10, 8)
    y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    gen = torch.Generator().manual_seed(3)
    xm, ym, lam = mixup(x, y, alpha=0.4, generator=gen)
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(ym.sum(-1), torch.ones(6))
    # Each mixed row is lam * x[i] + (1 - lam) * x[j] for the same j in inputs and targets.
    for i in range(6):
        js = [
            j for j in range(6) if torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)
        ]
        assert js
        assert any(torch.allclose(ym[i], lam * y[i] + (1 - lam) * y[j], atol=1e-6) for j in js)
    same = mixup(x, y, alpha=0.0)
    assert same[0] is x
    assert same[2] == 1.0


def _encode(wave: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"),
    [("WAV", "PCM_16", 1e-4), ("FLAC", None, 1e-4), ("OGG", "VORBIS", None)],
)
def test_decode_libsndfile_formats(fmt: str, subtype: str | None, atol: float | None) -> None:
    wave = np.stack([_chirp(1.0, 22_050), _chirp(1.0, 22_050, seed=1)], axis=1)
    decoded, rate = decode_audio(_encode(wave, 22_050, fmt, subtype))
    assert rate == 22_050
    assert decoded.shape == (2, 22_050)
    if atol is not None:
        assert np.abs(decoded.numpy().T - wave).max() < atol
    else:  # lossy codec: the waveform is kept, not the noise floor
        assert np.corrcoef(decoded.numpy()[0], wave[:, 0])[0, 1] > 0.95


def test_decode_mp3_through_ffmpeg() -> None:
    wave = _chirp(1.0)
    out = io.BytesIO()
    with av.open(out, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
        frame.sample_rate = 16_000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    decoded, rate = decode_audio(out.getvalue())
    assert rate == 16_000
    assert decoded.shape[0] == 1
    assert abs(decoded.shape[1] - 16_000) < 3000  # encoder delay / padding
    assert abs(_dominant_hz(decoded[0], rate) - _dominant_hz(torch.from_numpy(wave), 16_000)) < 200


WAV = _encode(_chirp(2.0), 16_000, "WAV", "PCM_16")


@pytest.mark.parametrize(
    ("data", "reason", "kwargs"),
    [
        (b"", "empty", {}),
        (np.random.default_rng(0).bytes(5000), "not_audio", {}),
        (b"just some text, not audio " * 50, "not_audio", {}),
        (WAV[: len(WAV) // 2], "truncated", {}),
        (WAV[:30], "truncated", {}),
        (WAV, "too_long", {"max_seconds": 1.0}),
        (_encode(np.zeros((0, 1), np.float32), 16_000, "WAV", "PCM_16"), "empty", {}),
    ],
    ids=[
        "empty",
        "random-bytes",
        "text",
        "wav-cut-mid-data",
        "wav-cut-in-header",
        "too-long",
        "no-frames",
    ],
)
def test_decode_errors_say_what_is_wrong(
    data: bytes, reason: str, kwargs: dict[str, float]
) -> None:
    with pytest.raises(BadAudio) as info:
        decode_audio(data, **kwargs)
    assert info.value.reason == reason
    assert str(info.value)
