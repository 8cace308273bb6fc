"""Video decoding: the right frame and the right second of sound per second, clear refusals.

Every video is synthesised in the test with PyAV (tests/av_synth.py): flat colours that switch
each second with a corner block that encodes the frame index, tones that switch each second,
and a silent second.
"""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
import torch

from lookaside.errors import BadVideo, DeadlineExceeded
from lookaside.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureConfig,
    fbank,
    frames_to_pixels,
    normalise,
    segment_features,
    to_mono_16k,
)
from lookaside.video import VideoLimits, av_inputs, decode_video, num_segments
from tests.av_synth import (
    PALETTE,
    RATE,
    TONES,
    Clip,
    Second,
    encode,
    frame_image,
    frame_index_of,
    tone,
    wav_bytes,
)

SILENT = 2
SECONDS = [Second(PALETTE[i], None if i == SILENT else TONES[i]) for i in range(5)]
MKV = Clip(SECONDS)  # mpeg4 + PCM in Matroska: exact audio
MP4 = Clip(SECONDS, container="mp4", video_codec="libx264", audio_codec="aac")  # phone-like


def _colour(image: torch.Tensor) -> np.ndarray:
    return image[20:, 20:].float().mean(dim=(0, 1)).numpy()


def _dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / RATE)[spectrum.argmax()])


@pytest.mark.parametrize("clip", [MKV, MP4], ids=["mkv_pcm", "mp4_h264_aac"])
def test_each_second_gets_its_centre_frame_and_its_sound(clip: Clip) -> None:
    video = decode_video(encode(clip))
    assert video.seconds == 5
    assert video.frames.shape == (5, 1, 48, 64, 3)
    assert video.frames.dtype == torch.uint8
    expected = torch.arange(5, dtype=torch.float64) + 0.5
    torch.testing.assert_close(video.frame_times[:, 0], expected, atol=1e-3, rtol=0)
    for s in range(5):
        image = video.frames[s, 0]
        assert np.abs(_colour(image) - np.array(PALETTE[s])).max() < 16, s
        assert frame_index_of(image.numpy()) == 5  # 10 fps: frame 5 is at the centre
    wave = video.audio.mean(dim=0).numpy()
    assert video.sample_rate == RATE
    for s in range(5):
        part = wave[s * RATE + 2000 : (s + 1) * RATE - 2000]  # away from the switches
        if s == SILENT:
            assert np.abs(part).max() < 0.01
        else:
            assert abs(_dominant_hz(part) - TONES[s]) < 5, s


def test_per_second_spectrograms_follow_the_tones() -> None:
    video = decode_video(encode(MKV))
    cfg = FeatureConfig(num_mel_bins=64, target_frames=100)
    spec, pixels = av_inputs(video, cfg, (48, 48))
    assert spec.shape == (5, 100, 64)
    assert pixels.shape == (5, 3, 48, 48)
    loudest = spec[:, 10:90].mean(dim=1).argmax(dim=1)  # mel bin of each second's tone
    order = [s for s in np.argsort(TONES[:5]) if s != SILENT]
    assert [int(loudest[s]) for s in order] == sorted(int(loudest[s]) for s in order)
    silent = spec[SILENT, 10:90]
    assert silent.std() < 0.05 < spec[0, 10:90].std()
    expected_colour = (np.array(PALETTE[1]) / 255 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
    got = pixels[1, :, 30:, 30:].mean(dim=(1, 2)).numpy()
    assert np.abs(got - expected_colour).max() < 0.1


def test_segment_features_slice_the_whole_clip_fbank() -> None:
    wave = torch.from_numpy(tone(SECONDS[:3]))
    cfg = FeatureConfig(num_mel_bins=32, target_frames=100)
    got = segment_features(wave, RATE, cfg, 3)
    fb = fbank(to_mono_16k(wave, RATE), 32)  # 298 frames: the last second is padded
    assert fb.shape[0] == 298
    for s in range(3):
        window = fb[s * 100 : s * 100 + 100]
        window = torch.nn.functional.pad(window, (0, 0, 0, 100 - window.shape[0]))
        torch.testing.assert_close(got[s], normalise(window, cfg.mean, cfg.std))


def test_frames_to_pixels_resizes_and_normalises() -> None:
    frames = torch.zeros(2, 3, 10, 20, 3, dtype=torch.uint8)
    frames[..., 0] = 255
    pixels = frames_to_pixels(frames, (16, 8))
    assert pixels.shape == (2, 3, 3, 16, 8)
    red = torch.tensor(
        [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]]
        + [-IMAGENET_MEAN[c] / IMAGENET_STD[c] for c in (1, 2)]
    )
    torch.testing.assert_close(pixels[0, 0, :, 5, 5], red)


@pytest.mark.parametrize("fps", [2, 3])
def test_several_frames_per_second(fps: int) -> None:
    video = decode_video(encode(MKV), limits=VideoLimits(frames_per_second=fps))
    assert video.frames.shape[:2] == (5, fps)
    targets = (torch.arange(5 * fps, dtype=torch.float64) + 0.5) / fps
    assert (video.frame_times.flatten() - targets).abs().max() <= 0.05 + 1e-6


def test_variable_frame_rate_picks_the_frame_nearest_each_centre() -> None:
    times = [0.0, 0.05, 0.32, 0.9, 1.42, 1.47, 2.1, 2.75, 3.3, 3.95]
    clip = Clip(
        SECONDS[:4], container="mp4", video_codec="libx264", audio_codec="aac", frame_times=times
    )
    video = decode_video(encode(clip))
    assert video.seconds == 4
    assert video.frame_times[:, 0].tolist() == pytest.approx([0.32, 1.47, 2.75, 3.3], abs=1e-3)
    for s, t in enumerate([0.32, 1.47, 2.75, 3.3]):
        assert frame_index_of(video.frames[s, 0].numpy()) == round((t - int(t)) * 10)
        assert np.abs(_colour(video.frames[s, 0]) - np.array(PALETTE[int(t)])).max() < 16


@pytest.mark.parametrize(("rotation", "turns"), [(90, 1), (-90, 3), (180, 2)])
def test_rotated_phone_video_is_turned_upright(rotation: int, turns: int) -> None:
    """The display matrix rotates counterclockwise by ``rotation`` degrees (FFmpeg's
    av_display_rotation_get), so the upright frame is the coded one turned that way."""
    clip = Clip(
        SECONDS[:2], container="mp4", video_codec="libx264", audio_codec="aac", rotation=rotation
    )
    video = decode_video(encode(clip))
    assert video.rotation == (rotation % 360)
    upright = np.rot90(frame_image(PALETTE[1], 5, (48, 64)), k=turns)
    got = video.frames[1, 0].numpy()
    assert got.shape == upright.shape
    assert np.abs(got.astype(float) - upright).mean() < 6
    small = decode_video(encode(clip), frame_size=(24, 40))
    assert small.frames.shape[2:] == (24, 40, 3)  # the upright image has the asked size


def test_separate_audio_file_supplies_the_sound() -> None:
    silent_video = encode(Clip(SECONDS[:3], audio_codec=None))
    with pytest.raises(BadVideo, match="no audio track") as info:
        decode_video(silent_video)
    assert info.value.reason == "no_audio_track"
    assert not info.value.over_limit
    video = decode_video(silent_video, audio=wav_bytes(SECONDS[:3]))
    assert video.seconds == 3
    part = video.audio[0, RATE + 2000 : 2 * RATE - 2000].numpy()
    assert abs(_dominant_hz(part) - TONES[1]) < 5


def _zero_frame_video() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.height, video.width, video.pix_fmt = 48, 64, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=RATE)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, RATE), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = RATE, 0
        for packet in audio.encode(frame):
            out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "limits", "reason", "match"),
    [
        (lambda: b"", None, "empty", "empty"),
        (lambda: b"\x00not a video at all" * 50, None, "not_video", "not a readable video"),
        (lambda: encode(MP4)[:3000], None, "not_video", "not a readable video"),
        (lambda: encode(MKV)[: len(encode(MKV)) // 2], None, "truncated", "truncated"),
        (lambda: wav_bytes(SECONDS), None, "no_video_track", "no video track"),
        (_zero_frame_video, None, "no_frames", "no decodable frames"),
        (lambda: encode(MKV), VideoLimits(max_seconds=2), "too_long", "limit is 2 s"),
        (lambda: encode(MKV), VideoLimits(max_side=32), "too_large", "64x48 pixels"),
        (lambda: encode(MKV), VideoLimits(max_frames=20), "too_many_frames", "max_frames"),
    ],
    ids=[
        "empty",
        "garbage",
        "cut_header",
        "cut_data",
        "audio_only",
        "zero_frames",
        "too_long",
        "too_large",
        "too_many_frames",
    ],
)
def test_bad_videos_are_refused_clearly(
    make: object, limits: VideoLimits | None, reason: str, match: str
) -> None:
    assert callable(make)
    with pytest.raises(BadVideo, match=match) as info:
        decode_video(make(), limits=limits)
    assert info.value.reason == reason
    assert info.value.over_limit == (reason in {"too_long", "too_large", "too_many_frames"})


def test_num_segments_counts_a_trailing_half_second() -> None:
    assert [num_segments(d) for d in (0.2, 1.0, 9.49, 9.5, 10.0, 10.04)] == [1, 1, 9, 10, 10, 10]


def test_decoding_stops_at_the_deadline() -> None:
    """A caller in a pool cannot cancel a running decode: the decoder checks the deadline at every
    frame, so a huge video stops when its request has given up (the service answers 504)."""
    data = encode(MKV)
    assert decode_video(data, deadline=time.monotonic() + 60).seconds == 5  # in time: decoded
    with pytest.raises(DeadlineExceeded, match="deadline after 0 frames"):
        decode_video(data, deadline=time.monotonic() - 1)
