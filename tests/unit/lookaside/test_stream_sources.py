"""The streaming client's sources, chunking, byte layout and pacing
(:mod:`lookaside.client.stream_sources`), against independent references: soundfile's and
decode_audio's own decoding, PyAV decoding the same lavfi graph without our resampler, and
``struct`` for the wire layout."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from lookaside.client import ClientError
from lookaside.client.stream_sources import (
    ArraySource,
    Pacer,
    chunk_frames,
    default_device,
    f32le,
    file_source,
    open_device,
    rechunk,
)
from lookaside.decode import decode_audio


def _tone(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """``[frames, channels]`` float32 noise plus a sine, distinct per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    cols = [0.4 * np.sin(2 * np.pi * (300 + 100 * c) * t) for c in range(channels)]
    return (np.stack(cols, axis=1) + 0.05 * rng.standard_normal((t.size, channels))).astype(
        np.float32
    )


def _wire(source: ArraySource, chunk_s: float, max_frame_bytes: int = 1 << 20) -> list[bytes]:
    frames = chunk_frames(source.sample_rate, chunk_s, source.channels, max_frame_bytes)
    return [f32le(b) for b in source.blocks(frames)]


def _unwire(frames: list[bytes], channels: int) -> np.ndarray:
    return np.frombuffer(b"".join(frames), dtype="<f4").reshape(-1, channels)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "chunk_s"),
    [(44_100, 2, "PCM_16", 0.1), (16_000, 1, "FLOAT", 0.037), (22_050, 3, "PCM_24", 0.25)],
)
def test_a_file_is_sent_whole_at_its_rate_and_channels(
    tmp_path: Path, rate: int, channels: int, subtype: str, chunk_s: float
) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, _tone(2.013, rate, channels), rate, subtype=subtype)
    source = file_source(path)
    assert (source.sample_rate, source.channels) == (rate, channels)
    frames = _wire(source, chunk_s)
    per = round(chunk_s * rate)
    sizes = [len(f) // (4 * channels) for f in frames]
    assert all(len(f) % (4 * channels) == 0 for f in frames)  # whole sample frames only
    assert sizes[:-1] == [per] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= per
    # every sample once, in order: soundfile's own reading, and decode_audio's [C, N]
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    assert sum(sizes) == expected.shape[0]
    np.testing.assert_array_equal(_unwire(frames, channels), expected)
    wave, _ = decode_audio(path.read_bytes())
    np.testing.assert_array_equal(_unwire(frames, channels), wave.numpy().T)


def test_a_compressed_file_is_what_decode_audio_decodes(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp3"
    buf = io.BytesIO()
    sf.write(buf, _tone(1.5, 44_100, 2), 44_100, format="MP3")
    path.write_bytes(buf.getvalue())
    source = file_source(path)
    wave, rate = decode_audio(path.read_bytes())
    assert (source.sample_rate, source.channels) == (rate, 2)
    np.testing.assert_array_equal(_unwire(_wire(source, 0.1), 2), wave.numpy().T)


def test_the_wire_layout_is_little_endian_interleaved_float32() -> None:
    block = np.array([[0.5, -1.0], [0.25, 3.0]], dtype=np.float32)
    assert f32le(block) == struct.pack("<4f", 0.5, -1.0, 0.25, 3.0)
    big_endian = block.astype(">f4")
    assert f32le(big_endian) == struct.pack("<4f", 0.5, -1.0, 0.25, 3.0)
    assert f32le(np.asfortranarray(block)) == struct.pack("<4f", 0.5, -1.0, 0.25, 3.0)


def test_array_sources_take_the_decode_layout_tensors_and_int16() -> None:
    mono = torch.linspace(-0.5, 0.5, 1000)
    source = ArraySource(mono, 8000)
    assert (source.channels, source.frames) == (1, 1000)
    np.testing.assert_array_equal(_unwire(_wire(source, 0.01), 1)[:, 0], mono.numpy())
    stereo = np.stack([np.arange(10), -np.arange(10)]).astype(np.float64)  # [C, N]
    got = _unwire(_wire(ArraySource(stereo, 1000), 0.003), 2)
    np.testing.assert_array_equal(got, stereo.T.astype(np.float32))
    pcm = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    got = _unwire(_wire(ArraySource(pcm, 1000), 1.0), 1)[:, 0]
    np.testing.assert_array_equal(got, pcm.astype(np.float32) / 32768)


@pytest.mark.parametrize(
    ("samples", "words"),
    [
        (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
        (np.zeros((2, 2, 5), dtype=np.float32), "shape"),
        (np.zeros((9, 5), dtype=np.float32), "1..8 channels"),
        (np.zeros((1, 0), dtype=np.float32), "no samples"),
        (np.zeros(5, dtype=np.int32), "float or int16"),
    ],
)
def test_array_sources_refuse_what_the_server_would(samples: np.ndarray, words: str) -> None:
    with pytest.raises(ClientError, match=words):
        ArraySource(samples, 16_000)


def test_file_source_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="cannot read .*missing.wav"):
        file_source(tmp_path / "missing.wav")


def test_rechunk_keeps_every_frame_in_order() -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((10_007, 2)).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, data.shape[0]), size=40, replace=False))
    pieces = np.split(data, cuts)
    out = list(rechunk(iter(pieces), 512))
    assert [len(b) for b in out] == [512] * (10_007 // 512) + [10_007 % 512]
    np.testing.assert_array_equal(np.concatenate(out), data)
    assert list(rechunk(iter([]), 4)) == []


def test_chunk_frames_is_capped_by_the_server_frame_limit() -> None:
    assert chunk_frames(16_000, 0.1, 1, 1 << 20) == 1600
    assert chunk_frames(48_000, 1.0, 2, 64_000) == 8000  # 64000 bytes / (4 x 2)
    assert chunk_frames(16_000, 1e-9, 1, 1 << 20) == 1  # at least one sample frame
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ClientError, match="chunk_s"):
            chunk_frames(16_000, bad, 1, 1 << 20)
    with pytest.raises(ClientError, match="under one sample"):
        chunk_frames(16_000, 0.1, 8, 31)


def test_pacer_sends_each_block_when_its_audio_ends() -> None:
    now = [100.0]
    pacer = Pacer(1000, 0.0, clock=lambda: now[0])
    assert pacer.delay(100) == pytest.approx(0.1)  # the first block: after its 0.1 s of audio
    now[0] = 100.1
    assert pacer.delay(200) == pytest.approx(0.1)
    now[0] = 100.5  # late: send at once
    assert pacer.delay(300) == 0.0
    ahead = Pacer(1000, 2.0, clock=lambda: now[0])
    assert ahead.delay(1500) == 0.0  # within 2 s ahead of real time
    assert ahead.delay(2500) == pytest.approx(0.5)
    assert Pacer(1000, -3.0).ahead_s == 0.0


# -- devices: FFmpeg's lavfi input stands in for a microphone -------------------------------------
SINE = "sine=frequency=440:sample_rate=16000:duration=1.5"


def _lavfi_reference() -> np.ndarray:
    """The same graph decoded by PyAV alone: s16 frames read as ``x / 32768``."""
    with av.open(SINE, format="lavfi") as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        assert container.streams.audio[0].format.name == "s16"
    return np.concatenate(frames).astype(np.float32) / 32768


def test_lavfi_is_available_for_the_device_tests() -> None:
    assert "lavfi" in av.formats_available


def test_a_device_is_read_as_float32_blocks() -> None:
    source = open_device("lavfi", SINE, sample_rate=16_000, channels=1)
    assert source.live
    try:
        blocks = list(source.blocks(1600))
    finally:
        source.close()
    assert [len(b) for b in blocks] == [1600] * 15
    np.testing.assert_array_equal(np.concatenate(blocks)[:, 0], _lavfi_reference())


def test_a_device_is_resampled_and_its_channels_packed() -> None:
    source = open_device("lavfi", SINE, sample_rate=8000, channels=2)
    try:
        data = np.concatenate(list(source.blocks(800)))
    finally:
        source.close()
    assert abs(data.shape[0] - 12_000) <= 64  # 1.5 s at 8 kHz, less the resampler's edges
    np.testing.assert_array_equal(data[:, 0], data[:, 1])  # mono duplicated into stereo
    spectrum = np.abs(np.fft.rfft(data[:, 0]))
    assert np.fft.rfftfreq(data.shape[0], 1 / 8000)[spectrum.argmax()] == pytest.approx(440, abs=1)


def test_device_opening_errors_name_the_device() -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise av.error.FileNotFoundError(2, "No such file or directory")

    with pytest.raises(ClientError, match=r"cannot open the alsa input 'hw:9'.*--mic-device"):
        open_device("alsa", "hw:9", opener=broken)
    with pytest.raises(ClientError, match="1 or 2 channels"):
        open_device("lavfi", SINE, channels=3)


def test_default_device_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    assert default_device({"pulse", "alsa"}) == ("pulse", "default")
    assert default_device({"alsa", "lavfi"}) == ("alsa", "default")
    with pytest.raises(ClientError, match="--mic-format"):
        default_device({"lavfi"})
    monkeypatch.setattr("sys.platform", "darwin")
    assert default_device(set()) == ("avfoundation", ":0")
    monkeypatch.setattr("sys.platform", "win32")
    with pytest.raises(ClientError, match="audio=NAME"):
        default_device({"dshow"})
