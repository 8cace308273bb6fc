"""Decoding under a budget: block-by-block decoding equals the whole-file decode, a header over
the budget is refused before any audio is decoded, a header that lies is bounded by counting,
implausible rates are refused before resampling, and the long-clip fbank/resample paths equal the
whole-array ones. Every file is generated in the test."""

from __future__ import annotations

import io
import struct
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from lookaside import decode as decode_module
from lookaside import decode_sink
from lookaside import features as features_module
from lookaside.decode import decode_audio, downmix
from lookaside.errors import BadAudio
from lookaside.features import (
    FeatureConfig,
    extract_windows,
    fbank,
    normalise,
    resample,
    sliding_windows,
    to_mono_16k,
    window_count,
)
from lookaside.resample import RESAMPLE_CHUNK, StreamResampler
from lookaside.video import VideoLimits, decode_video


def _noise(frames: int, channels: int, seed: int = 0) -> np.ndarray:
    """``[frames, channels]`` float32 in [-0.5, 0.5]: no two channels alike."""
    return (np.random.default_rng(seed).random((frames, channels)) - 0.5).astype(np.float32)


def _sf_bytes(wave: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _silence_flac(channels: int, rate: int, seconds: int, *, unknown_length: bool = False) -> bytes:
    """Silence compresses to almost nothing: the shape of a decompression bomb."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((rate, channels), np.int16)
        for _ in range(seconds):
            f.write(block)
    data = bytearray(buf.getvalue())
    if unknown_length:  # STREAMINFO total samples = 0: "unknown" (a streamed FLAC)
        field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = field.to_bytes(8, "big")
    return bytes(data)


def _wav_header(
    rate: int, frames: int, channels: int = 1, *, data_size: int | None = None
) -> bytes:
    size = frames * channels * 2 if data_size is None else data_size
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    riff = struct.pack("<I", (36 + size) & 0xFFFFFFFF)
    return b"RIFF" + riff + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", size)


LOSSLESS = {
    "wav16": ("WAV", "PCM_16"),
    "wav-float": ("WAV", "FLOAT"),
    "flac": ("FLAC", "PCM_24"),
    "ogg-vorbis": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of ~997 samples, so every test file is decoded in many blocks."""
    monkeypatch.setattr(decode_module, "_BLOCK_SAMPLES", 997)


@pytest.mark.parametrize(("fmt", "subtype"), LOSSLESS.values(), ids=LOSSLESS)
@pytest.mark.usefixtures("small_blocks")
def test_block_decoding_equals_the_whole_file_read(fmt: str, subtype: str) -> None:
    channels = 2 if fmt == "MP3" else 3
    data = _sf_bytes(_noise(22_050 + 17, channels), 22_050, fmt, subtype)
    whole, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    decoded, got_rate = decode_audio(data, max_samples=10**7)
    assert got_rate == rate
    reference = torch.from_numpy(np.ascontiguousarray(whole.T))
    if fmt == "MP3":  # libmpg123's float output depends on the read size in the last bit
        torch.testing.assert_close(decoded, reference, atol=2.5e-7, rtol=0)
    else:
        assert torch.equal(decoded, reference)
    # downmixed block by block = the whole decode downmixed (what to_mono_16k does), bit for bit
    mono, _ = decode_audio(data, max_samples=10**7, mono=True)
    assert mono.shape == (1, whole.shape[0])
    assert torch.equal(mono[0], downmix(decoded))
    assert torch.equal(to_mono_16k(mono, rate), to_mono_16k(decoded, rate))


def _pyav_bytes(wave: np.ndarray, rate: int, fmt: str, codec: str) -> bytes:
    out = io.BytesIO()
    layout = {1: "mono", 2: "stereo"}[wave.shape[0]]
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave), format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def _pyav_whole(data: bytes) -> np.ndarray:
    """The decode before budgets: every frame through one resampler, joined at the end."""
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="fltp")
        chunks = [
            out.to_ndarray()
            for frame in container.decode(container.streams.audio[0])
            for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    return np.concatenate(chunks, axis=1)


@pytest.mark.parametrize(("fmt", "codec"), [("ipod", "aac"), ("matroska", "flac")])
def test_pyav_frame_by_frame_decoding_equals_the_whole_decode(fmt: str, codec: str) -> None:
    data = _pyav_bytes(_noise(44_100, 2).T, 44_100, fmt, codec)
    decoded, rate = decode_audio(data, max_samples=10**7)
    assert rate == 44_100
    assert torch.equal(decoded, torch.from_numpy(_pyav_whole(data)))
    mono, _ = decode_audio(data, max_samples=10**7, mono=True)
    assert torch.equal(mono[0], downmix(decoded))


class _CountingSoundFile(sf.SoundFile):
    """Counts the frames libsndfile hands out."""

    frames_read = 0
    reads = 0

    def read(self, *args: Any, **kwargs: Any) -> Any:
        type(self).reads += 1
        block = super().read(*args, **kwargs)
        type(self).frames_read += len(block)
        return block


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[_CountingSoundFile]:
    _CountingSoundFile.frames_read = _CountingSoundFile.reads = 0
    monkeypatch.setattr(decode_module.sf, "SoundFile", _CountingSoundFile)
    return _CountingSoundFile


def test_header_over_the_budget_is_refused_before_any_audio_is_decoded(
    counting: type[_CountingSoundFile],
) -> None:
    bomb = _silence_flac(8, 192_000, 3)  # 4.6 M samples in a few kilobytes
    assert len(bomb) < 20_000
    with pytest.raises(BadAudio) as info:
        decode_audio(bomb, max_samples=1_000_000)
    assert info.value.reason == "too_large"
    message = str(info.value)
    for part in ("4,608,000", "8 channel", "192000 Hz", "1,000,000", "downmix", "trim"):
        assert part in message, message
    assert "LOOKASIDE_MAX_DECODED_SAMPLES" in message
    assert counting.reads == counting.frames_read == 0  # not one block decoded


@pytest.fixture
def decoded_samples(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Samples of every block the decoder produced (either library), as it produced them."""
    sizes: list[int] = []
    real = decode_sink.Sink.add

    def add(self: Any, block: np.ndarray) -> None:
        sizes.append(block.size)
        real(self, block)

    monkeypatch.setattr(decode_sink.Sink, "add", add)
    return sizes


@pytest.mark.parametrize("mono", [False, True])
def test_a_header_without_length_is_bounded_by_counting(
    decoded_samples: list[int], mono: bool
) -> None:
    bomb = _silence_flac(8, 48_000, 4, unknown_length=True)  # 1.5 M samples, length not recorded
    assert sf.info(io.BytesIO(bomb)).frames > 10**15  # libsndfile: "unknown"
    budget = 200_000
    with pytest.raises(BadAudio) as info:
        decode_audio(bomb, max_samples=budget, mono=mono)
    assert info.value.reason == "too_large"
    assert "more than 200,000" in str(info.value)
    # decoding stopped at the budget, give or take one FLAC block (at most 4,608 frames x 8)
    assert budget - 8 * 4608 < sum(decoded_samples) <= budget + 8 * 4608


def test_a_header_without_length_under_the_budget_decodes() -> None:
    data = _silence_flac(2, 16_000, 2, unknown_length=True)
    wave, rate = decode_audio(data, max_samples=64_000, mono=True)
    assert (rate, wave.shape) == (16_000, (1, 32_000))


def test_a_streamed_wav_length_comes_from_the_bytes_not_the_header() -> None:
    frames = 16_000
    body = (np.arange(frames) % 200).astype("<i2").tobytes()
    data = _wav_header(16_000, frames, data_size=0xFFFFFFFF) + body  # "length unknown"
    wave, _ = decode_audio(data, max_samples=frames)
    assert wave.shape == (1, frames)
    with pytest.raises(BadAudio) as info:
        decode_audio(data, max_samples=frames - 1)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("rate", [1, 999, 384_001])
def test_implausible_sample_rates_are_refused_before_resampling(
    monkeypatch: pytest.MonkeyPatch, rate: int
) -> None:
    def no_resampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("resampled a rate no recording has")

    monkeypatch.setattr(torchaudio.functional, "resample", no_resampling)
    data = _wav_header(rate, 500) + bytes(1000)  # the 1,044-byte, "1 Hz, 500 s" WAV
    with pytest.raises(BadAudio) as info:
        decode_audio(data)
    assert info.value.reason == "bad_rate"
    assert f"{rate} Hz" in str(info.value)
    assert "re-export" in str(info.value)
    with pytest.raises(BadAudio) as info:
        to_mono_16k(torch.zeros(1, 500), rate)
    assert info.value.reason == "bad_rate"


def test_decoding_stops_at_the_budget_in_pyav_and_counts_every_frame() -> None:
    data = _pyav_bytes(np.zeros((2, 48_000), np.float32), 48_000, "matroska", "flac")
    assert decode_audio(data, max_samples=96_000)[0].shape == (2, 48_000)
    with pytest.raises(BadAudio) as info:
        decode_audio(data, max_samples=95_000)
    assert info.value.reason == "too_large"


def test_pyav_header_over_the_budget_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a stream whose header is over the budget")

    data = _pyav_bytes(np.zeros((2, 48_000 * 3), np.float32), 48_000, "matroska", "flac")
    monkeypatch.setattr(decode_module, "_decode_stream", no_decoding)
    with pytest.raises(BadAudio) as info:
        decode_audio(data, max_samples=100_000)
    assert info.value.reason == "too_large"


def test_a_video_whose_sound_is_a_bomb_is_refused() -> None:
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=2)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("flac", rate=96_000, layout="5.1")
        assert isinstance(audio, av.AudioStream)
        black = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for i in range(6):
            black.pts = i
            container.mux(video.encode(black))
        container.mux(video.encode(None))
        silence = np.zeros((6, 96_000), np.float32)  # PyAV cannot build 8-plane frames
        for second in range(3):
            frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="5.1")
            frame.sample_rate, frame.pts = 96_000, second * 96_000
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    with pytest.raises(BadAudio) as info:
        decode_video(out.getvalue(), limits=VideoLimits(max_decoded_samples=1_000_000))
    assert info.value.reason == "too_large"
    assert "6 channel" in str(info.value)
    decoded = decode_video(out.getvalue(), limits=VideoLimits(max_decoded_samples=6 * 3 * 96_000))
    assert decoded.audio.shape == (1, 3 * 96_000)  # downmixed while decoding


def test_eight_channel_aac_decodes_instead_of_crashing_the_process() -> None:
    # PyAV 18 reads past the plane pointers of 8-channel planar frames (a segfault before the
    # decoder converted to packed float): one upload could kill the server.
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=48_000, layout="7.1")
        assert isinstance(stream, av.AudioStream)
        ramp = np.repeat(np.linspace(-0.5, 0.5, 8, dtype=np.float32)[None], 1024, 0)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(ramp.reshape(1, -1), format="flt", layout="7.1")
            frame.sample_rate, frame.pts = 48_000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    wave, rate = decode_audio(out.getvalue())
    assert (wave.shape[0], rate) == (8, 48_000)
    mono, _ = decode_audio(out.getvalue(), mono=True)
    assert torch.equal(mono[0], downmix(wave))


def test_nan_at_the_end_of_a_long_wave_is_found() -> None:
    wave = torch.zeros(2, 3_000_000)
    wave[1, -1] = float("nan")
    with pytest.raises(BadAudio) as info:
        decode_module.check_values(wave, 16_000, 600.0)
    assert info.value.reason == "bad_values"


# -- long clips: pieces equal the whole ---------------------------------------------------------
def test_long_clip_fbank_in_chunks_equals_the_whole_fbank() -> None:
    rate = 16_000
    t = torch.arange(rate * 25, dtype=torch.float64) / rate
    wave = (0.3 * torch.sin(2 * torch.pi * (300 + 200 * torch.sin(t)) * t)).float() + 0.01
    chunked = fbank(wave, 64)
    assert chunked.shape[0] > 2 * features_module.FBANK_CHUNK_FRAMES  # several chunks
    whole = features_module._kaldi_fbank(wave - wave.mean(), 64, rate)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("rate", "target"), [(44_100, 16_000), (8_000, 16_000), (48_000, 22_050)])
def test_long_resample_in_pieces_equals_torchaudio(rate: int, target: int) -> None:
    wave = torch.from_numpy(_noise(RESAMPLE_CHUNK * 2 + 1234, 1)[:, 0])
    got = resample(wave, rate, target)
    want = torchaudio.functional.resample(wave, rate, target)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # fed block by block (as the decoder does), bit for bit the same as fed whole
    stream = StreamResampler(rate, target)
    for block in torch.split(wave, 99_991):
        stream.feed(block)
    assert torch.equal(stream.finish(), got)


@pytest.mark.parametrize(("seconds", "rate"), [(1.0, 44_100), (70.0, 22_050)])
def test_resampled_while_decoding_equals_to_mono_16k_of_the_whole(
    seconds: float, rate: int
) -> None:
    data = _sf_bytes(_noise(int(rate * seconds), 2), rate, "FLAC", "PCM_16")
    whole, got_rate = decode_audio(data)
    streamed, streamed_rate = decode_audio(data, max_samples=10**8, mono=True, resample_to=16_000)
    assert (got_rate, streamed_rate) == (rate, 16_000)
    assert torch.equal(streamed[0], to_mono_16k(whole, rate))


@pytest.mark.parametrize("seconds", [0.5, 3.0, 25.0])
def test_windows_without_overlap_equal_sliding_windows_then_normalise(seconds: float) -> None:
    wave = torch.from_numpy(_noise(int(16_000 * seconds), 1)[:, 0])
    cfg = FeatureConfig(num_mel_bins=32, target_frames=300)
    got = extract_windows(wave, 16_000, cfg)
    reference = sliding_windows(fbank(wave, 32), 300, 300)
    assert torch.equal(got.features, normalise(reference.features, cfg.mean, cfg.std))
    assert torch.equal(got.start_seconds, reference.start_seconds)


@pytest.mark.parametrize(
    ("samples", "rate", "frames", "hop"),
    [
        (16_000, 16_000, 100, 100),
        (16_000 * 7 + 33, 16_000, 128, 1),
        (44_100 * 3 + 7, 44_100, 64, 20),
        (8_000 * 2 + 1, 8_000, 50, 50),
        (400, 16_000, 10, 10),
        (48_000, 48_000, 1024, 512),
    ],
)
def test_window_count_is_what_extract_windows_makes(
    samples: int, rate: int, frames: int, hop: int
) -> None:
    cfg = FeatureConfig(num_mel_bins=16, target_frames=frames, window_hop_frames=hop)
    wave = torch.from_numpy(_noise(samples, 1)[:, 0])
    assert window_count(samples, rate, cfg) == extract_windows(wave, rate, cfg).features.shape[0]
