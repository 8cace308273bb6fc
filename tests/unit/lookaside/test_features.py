"""Features: AST fbank against transformers' extractor, resampling, windows and
decoding of uploads (formats that work, and a reason for each kind of bad upload)."""

from __future__ import annotations

import io
from collections.abc import Callable

import av
import numpy as np
import pydantic
import pytest
import soundfile as sf
import torch
from transformers import ASTFeatureExtractor

from lookaside.decode import decode_audio
from lookaside.errors import BadAudio, ConfigError
from lookaside.features import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    FeatureConfig,
    extract,
    extract_windows,
    fbank,
    normalise,
    pad_or_crop,
    sliding_windows,
    to_mono_16k,
)


def _chirp(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A 300 Hz -> ~3 kHz chirp plus noise: energy in many mel bins, seeded."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (300 * t + 400 * t**2)) + 0.05 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def _sine(hz: float, seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def _dominant_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave.double()).abs()
    return float(spectrum.argmax()) * rate / wave.numel()


# -- FeatureConfig ----------------------------------------------------------------------------
def test_feature_config_round_trips_through_a_checkpoint_manifest() -> None:
    cfg = FeatureConfig(target_frames=512, window_hop_frames=256, max_seconds=30.0, mean=-3.5)
    assert FeatureConfig.model_validate(cfg.model_dump()) == cfg
    assert FeatureConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert cfg.hop_frames == 256
    assert FeatureConfig(target_frames=128).hop_frames == 128
    assert FeatureConfig(target_frames=512).window_seconds == pytest.approx(5.12)
    defaults = FeatureConfig()
    assert (defaults.sample_rate, defaults.num_mel_bins, defaults.target_frames) == (
        16_000,
        128,
        1024,
    )
    assert (defaults.mean, defaults.std) == (AUDIOSET_MEAN, AUDIOSET_STD)


@pytest.mark.parametrize(
    "bad",
    [
        {"sample_rate": 0},
        {"num_mel_bins": -1},
        {"target_frames": 0},
        {"std": 0.0},
        {"std": float("nan")},
        {"mean": float("inf")},
        {"window_hop_frames": 0},
        {"target_frames": 128, "window_hop_frames": 129},
        {"max_seconds": 0.0},
        {"unknown_field": 1},
    ],
)
def test_feature_config_rejects_invalid_values(bad: dict[str, float]) -> None:
    with pytest.raises(pydantic.ValidationError):
        FeatureConfig.model_validate(bad)


def test_feature_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        FeatureConfig().target_frames = 10  # type: ignore[misc]


# -- fbank against the reference ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "frames"),
    [(3.0, 200), (3.0, 512), (1.0, 128), (0.5, 128), (2.0, 198)],
    ids=["crop", "pad", "spc-pad", "short-pad", "exact"],
)
def test_extract_matches_ast_feature_extractor(seconds: float, frames: int) -> None:
    wave = _chirp(seconds)
    reference = ASTFeatureExtractor(
        sampling_rate=16_000,
        num_mel_bins=128,
        max_length=frames,
        mean=AUDIOSET_MEAN,
        std=AUDIOSET_STD,
        do_normalize=True,
    )(wave, sampling_rate=16_000, return_tensors="pt")["input_values"][0]
    ours = extract(torch.from_numpy(wave), 16_000, FeatureConfig(target_frames=frames))
    assert ours.shape == reference.shape == (frames, 128)
    assert (ours - reference).abs().max() <= 1e-3
    # The pieces compose to the same thing.
    manual = normalise(pad_or_crop(fbank(torch.from_numpy(wave)), frames))
    torch.testing.assert_close(manual, ours)


def test_fbank_frames_and_minimum_length() -> None:
    assert fbank(torch.randn(400)).shape == (1, 128)  # exactly one 25 ms window
    assert fbank(torch.randn(16_000), num_mel_bins=64).shape == (98, 64)  # 1 + (N - 400) // 160
    with pytest.raises(BadAudio) as info:
        fbank(torch.randn(399))
    assert info.value.reason == "too_short"
    with pytest.raises(BadAudio, match="to_mono_16k"):
        fbank(torch.randn(2, 16_000))


def test_pad_or_crop_pads_zeros_at_the_end() -> None:
    fb = torch.ones(5, 3)
    padded = pad_or_crop(fb, 8)
    assert padded.shape == (8, 3)
    assert bool((padded[:5] == 1).all())
    assert bool((padded[5:] == 0).all())
    torch.testing.assert_close(pad_or_crop(torch.arange(10.0)[:, None], 4)[:, 0], torch.arange(4.0))
    with pytest.raises(ConfigError):
        pad_or_crop(fb, 0)


# -- to_mono_16k ------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [44_100, 48_000, 8_000, 16_000])
def test_to_mono_16k_downmixes_and_resamples(rate: int) -> None:
    left = _sine(1000.0, 1.0, rate)
    stereo = torch.from_numpy(np.stack([left, 0.5 * left]))
    mono = to_mono_16k(stereo, rate)
    assert mono.dtype == torch.float32
    assert mono.shape == (16_000,)
    assert abs(_dominant_hz(mono, 16_000) - 1000.0) < 2.0
    assert mono[1000:-1000].abs().max().item() == pytest.approx(0.375, abs=0.01)  # channel mean


@pytest.mark.parametrize(
    ("dtype", "full_scale", "silence"),
    [
        (torch.int16, 2**15, 0),
        (torch.int32, 2**31, 0),
        (torch.uint8, 2**7, 128),  # 8-bit PCM is offset binary
        (torch.float64, None, 0),
        (torch.float16, None, 0),
    ],
)
def test_to_mono_16k_accepts_pcm_dtypes(
    dtype: torch.dtype, full_scale: int | None, silence: int
) -> None:
    sine = torch.from_numpy(_sine(440.0, 0.5, 44_100)).double()
    reference = to_mono_16k(sine.float(), 44_100)
    if full_scale is None:
        wave = sine.to(dtype)
    else:
        wave = (sine * (full_scale - 1)).round().add(silence).to(dtype)
    mono = to_mono_16k(wave, 44_100)
    assert mono.dtype == torch.float32
    assert mono.shape == reference.shape
    torch.testing.assert_close(mono, reference, atol=1e-2, rtol=0)


def test_to_mono_16k_rejects_transposed_input() -> None:
    with pytest.raises(BadAudio, match="transpose"):
        to_mono_16k(torch.zeros(16_000, 2), 16_000)


# -- windows ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "frames", "hop", "starts"),
    [
        (250, 100, 60, [0, 60, 120, 180]),
        (250, 100, 100, [0, 100, 200]),
        (200, 100, 100, [0, 100]),
        (100, 100, 50, [0]),
        (30, 100, 100, [0]),
        (101, 100, 1, [0, 1]),
    ],
)
def test_sliding_windows_cover_the_clip(n: int, frames: int, hop: int, starts: list[int]) -> None:
    fb = torch.arange(1.0, n + 1.0)[:, None] * torch.tensor([1.0, -1.0, 2.0])  # no zero rows
    windows = sliding_windows(fb, frames=frames, hop=hop)
    assert windows.features.shape == (len(starts), frames, 3)
    torch.testing.assert_close(
        windows.start_seconds, torch.tensor(starts, dtype=torch.float64) * 0.01
    )
    for window, start in zip(windows.features, starts, strict=True):
        real = min(frames, n - start)
        torch.testing.assert_close(window[:real], fb[start : start + real])
        assert bool((window[real:] == 0).all())  # only the end of the clip is padded
    assert starts[-1] + frames >= n  # the last frame of the clip is in a window


@pytest.mark.parametrize(("frames", "hop"), [(100, 101), (100, 0), (0, 0)])
def test_sliding_windows_refuse_hops_that_skip_audio(frames: int, hop: int) -> None:
    with pytest.raises(ConfigError):
        sliding_windows(torch.zeros(300, 4), frames=frames, hop=hop)


def test_extract_windows_uses_config_hop_and_matches_extract() -> None:
    wave = torch.from_numpy(_chirp(3.0))  # 298 frames
    cfg = FeatureConfig(target_frames=100, window_hop_frames=50)
    windows = extract_windows(wave, 16_000, cfg)
    assert windows.features.shape == (5, 100, 128)  # starts 0, 50, ..., 200 reach frame 297
    torch.testing.assert_close(
        windows.start_seconds, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]).double()
    )
    torch.testing.assert_close(windows.features[0], extract(wave, 16_000, cfg))
    torch.testing.assert_close(windows.features[1, :50], extract(wave, 16_000, cfg)[50:])
    # Padding is normalised like AST's: zeros before normalisation.
    pad_value = (0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    torch.testing.assert_close(windows.features[4, 98:], torch.full((2, 128), pad_value))
    assert extract_windows(wave, 16_000, FeatureConfig(target_frames=100)).features.shape[0] == 3


@pytest.mark.parametrize(
    ("wave", "cfg", "reason"),
    [
        (torch.tensor([0.0, float("nan")] * 800), FeatureConfig(), "bad_values"),
        (torch.tensor([0.0, float("inf")] * 800), FeatureConfig(), "bad_values"),
        (torch.zeros(16_000 * 3), FeatureConfig(max_seconds=2), "too_long"),
        (torch.zeros(2, 16_000 * 3), FeatureConfig(max_seconds=2), "too_long"),
        (torch.zeros(100), FeatureConfig(), "too_short"),
        (torch.zeros(0), FeatureConfig(), "empty"),
    ],
    ids=["nan", "inf", "too-long", "too-long-stereo", "too-short", "empty"],
)
@pytest.mark.parametrize("fn", [extract, extract_windows])
def test_extract_refuses_bad_waveforms(
    fn: Callable[..., object], wave: torch.Tensor, cfg: FeatureConfig, reason: str
) -> None:
    with pytest.raises(BadAudio) as info:
        fn(wave, 16_000, cfg)
    assert info.value.reason == reason


# -- decoding ---------------------------------------------------------------------------------
def _encode_sf(wave: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _encode_av(
    fmt: str,
    codec: str | None,
    wave: np.ndarray,
    rate: int = 16_000,
    *,
    video: bool = False,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode ``[C, N]`` float audio (and optionally a few black video frames) with PyAV."""
    out = io.BytesIO()
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(out, "w", format=fmt, options=options or {}) as container:
        vstream = container.add_stream("mpeg4", rate=25) if video else None
        astream = container.add_stream(codec, rate=rate, layout=layout) if codec else None
        if vstream is not None:
            vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
            black = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for _ in range(25):
                container.mux(vstream.encode(black))
            container.mux(vstream.encode(None))
        if astream is not None:
            assert isinstance(astream, av.AudioStream)
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wave, dtype=np.float32), format="fltp", layout=layout
            )
            frame.sample_rate, frame.pts = rate, 0
            container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return out.getvalue()


STEREO = np.stack([_chirp(1.0, 22_050), _chirp(1.0, 22_050, seed=1)])  # [C, N]


@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"),
    [
        ("WAV", "PCM_16", 1e-4),
        ("WAV", "FLOAT", 0.0),
        ("FLAC", None, 1e-4),
        ("AIFF", "PCM_24", 1e-6),
        ("OGG", "VORBIS", None),
        ("OGG", "OPUS", None),
    ],
)
def test_decode_libsndfile_formats(fmt: str, subtype: str | None, atol: float | None) -> None:
    rate = 48_000 if subtype == "OPUS" else 22_050  # Opus only runs at 48 kHz and below
    wave = STEREO if rate == 22_050 else np.stack([_chirp(1.0, rate), _chirp(1.0, rate, 1)])
    decoded, got_rate = decode_audio(_encode_sf(wave.T, rate, fmt, subtype))
    assert got_rate == rate
    assert decoded.dtype == torch.float32
    assert decoded.shape == wave.shape
    if atol is not None:
        assert np.abs(decoded.numpy() - wave).max() <= atol
    else:  # lossy codec: the waveform is kept, not the noise floor
        assert np.corrcoef(decoded.numpy()[0], wave[0])[0, 1] > 0.9
        assert np.corrcoef(decoded.numpy()[1], wave[1])[0, 1] > 0.9


@pytest.mark.parametrize(
    ("fmt", "codec", "options", "video"),
    [
        ("mp3", "libmp3lame", None, False),
        ("mp3", "libmp3lame", {"write_xing": "0"}, False),  # length only estimated
        ("ipod", "aac", None, False),  # .m4a
        ("adts", "aac", None, False),  # raw .aac
        ("mp4", "aac", None, True),  # the sound track of a video
        ("matroska", "libopus", None, True),
    ],
    ids=["mp3", "mp3-no-xing", "m4a", "aac", "mp4-video", "mkv-video"],
)
def test_decode_compressed_formats(
    fmt: str, codec: str, options: dict[str, str] | None, video: bool
) -> None:
    rate = 48_000 if codec == "libopus" else 16_000
    wave = _sine(1000.0, 1.0, rate)[None]
    decoded, got_rate = decode_audio(
        _encode_av(fmt, codec, wave, rate, video=video, options=options)
    )
    assert got_rate == rate
    assert decoded.dtype == torch.float32
    assert decoded.shape[0] == 1
    assert abs(decoded.shape[1] - rate) < 0.15 * rate  # encoder delay and padding
    assert abs(_dominant_hz(decoded[0], rate) - 1000.0) < 5.0


def test_decode_keeps_channels_of_compressed_audio() -> None:
    wave = np.stack([_sine(500.0, 1.0, 44_100), _sine(2000.0, 1.0, 44_100)])
    decoded, rate = decode_audio(_encode_av("ipod", "aac", wave, 44_100))
    assert rate == 44_100
    assert decoded.shape[0] == 2
    assert abs(_dominant_hz(decoded[0], rate) - 500.0) < 5.0
    assert abs(_dominant_hz(decoded[1], rate) - 2000.0) < 5.0


WAV = _encode_sf(_chirp(2.0), 16_000, "WAV", "PCM_16")
M4A = _encode_av("ipod", "aac", _chirp(2.0)[None])
NAN_WAV = _encode_sf(np.array([0.0, np.nan, 0.5] * 200, np.float32), 16_000, "WAV", "FLOAT")


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


OGG = _encode_sf(_chirp(2.0), 16_000, "OGG", "VORBIS")


BAD_UPLOADS = {
    "empty": (b"", "empty", 600.0),
    "random-bytes": (np.random.default_rng(0).bytes(5000), "not_audio", 600.0),
    "text": (b"just some text, not audio " * 50, "not_audio", 600.0),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(200), "not_audio", 600.0),
    "video-without-sound": (
        _encode_av("mp4", None, np.zeros((1, 1)), video=True),
        "not_audio",
        600.0,
    ),
    "wav-cut-mid-data": (_cut(WAV, 0.5), "truncated", 600.0),
    "wav-one-byte-short": (WAV[:-1], "truncated", 600.0),
    "wav-cut-in-header": (WAV[:30], "truncated", 600.0),
    "aiff-cut": (_cut(_encode_sf(_chirp(1.0), 16_000, "AIFF", "PCM_16"), 0.6), "truncated", 600.0),
    "flac-cut": (_cut(_encode_sf(_chirp(1.0), 16_000, "FLAC"), 0.6), "truncated", 600.0),
    "ogg-cut": (_cut(OGG, 0.9), "truncated", 600.0),
    "ogg-cut-between-pages": (OGG[: OGG.rindex(b"OggS")], "truncated", 600.0),  # no end page
    "m4a-cut": (_cut(M4A, 0.5), "truncated", 600.0),
    "mp3-cut": (_cut(_encode_av("mp3", "libmp3lame", _chirp(2.0)[None]), 0.5), "truncated", 600.0),
    "mkv-cut": (
        _cut(_encode_av("matroska", "libopus", _chirp(2.0, 48_000)[None], 48_000), 0.5),
        "truncated",
        600.0,
    ),
    "wav-too-long": (WAV, "too_long", 1.0),
    "m4a-too-long": (M4A, "too_long", 1.0),
    "wav-no-frames": (_encode_sf(np.zeros((0, 1), np.float32), 16_000, "WAV"), "empty", 600.0),
    "wav-nan": (NAN_WAV, "bad_values", 600.0),
}


@pytest.mark.parametrize(("data", "reason", "max_seconds"), BAD_UPLOADS.values(), ids=BAD_UPLOADS)
def test_decode_errors_say_what_is_wrong(data: bytes, reason: str, max_seconds: float) -> None:
    with pytest.raises(BadAudio) as info:
        decode_audio(data, max_seconds=max_seconds)
    assert info.value.reason == reason
    message = str(info.value)
    assert any(fix in message for fix in ("upload", "trim", "re-export")), message


def test_too_long_is_refused_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a file whose header already says it is too long")

    monkeypatch.setattr(sf, "read", no_decoding)
    with pytest.raises(BadAudio) as info:
        decode_audio(WAV, max_seconds=1.0)
    assert info.value.reason == "too_long"


@pytest.mark.parametrize("fmt", ["WAV", "AIFF", "FLAC", "OGG"])
def test_every_prefix_of_a_file_is_refused(fmt: str) -> None:
    data = _encode_sf(_chirp(0.5), 16_000, fmt)
    for end in [*range(1, 64, 3), *range(64, len(data), max(1, len(data) // 25))]:
        with pytest.raises(BadAudio) as info:
            decode_audio(data[:end])
        # Too short to recognise is "not audio"; once the magic bytes are in, "truncated".
        assert info.value.reason in (("not_audio", "truncated") if end < 12 else ("truncated",))
