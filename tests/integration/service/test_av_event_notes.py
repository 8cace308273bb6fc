"""``POST /av-event`` says when the sound runs past the video: the seconds of audio after the last
video second are cut (one label per second of the video), and ``notes`` names them; a video and
sound of one length get no note. Through the in-process app and the Python client's model."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from lookaside.backbone import VisionTransformer
from lookaside.client import models
from tests.av_synth import Clip, encode, wav_bytes
from tests.integration.service.av_support import SECONDS, av_checkpoint, clip_bytes, tiny_av
from tests.integration.service.svc_support import put_in_store, serve, settings


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny_av()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, backbone: VisionTransformer) -> Path:
    root = tmp_path_factory.mktemp("store")
    put_in_store(root, av_checkpoint(backbone, "scene", seed=0))
    return root


def _post(store: Path, backbone: VisionTransformer, video: bytes, audio: bytes | None) -> dict:
    async def go() -> dict:
        files = {"video": ("clip.mkv", video, "video/x-matroska")}
        if audio is not None:
            files["audio"] = ("sound.wav", audio, "audio/wav")
        async with serve(settings(store), backbone) as (_, client):
            r = await client.post("/av-event", files=files, data={"adapter": "scene"})
        assert r.status_code == 200, r.text
        body: dict = r.json()
        return body

    return asyncio.run(go())


def _cut(note: str) -> tuple[float, float, float, float]:
    """(audio s, video s, cut s, scored until s) as the note states them."""
    found = re.fullmatch(
        r"the audio \(([\d.]+) s\) is longer than the video \(([\d.]+) s\): its last ([\d.]+) s, "
        r"after ([\d.]+) s, were cut and not scored .*",
        note,
    )
    assert found, note
    audio, video, cut, until = (float(g) for g in found.groups())
    return audio, video, cut, until


def test_a_separate_audio_file_longer_than_the_video_is_noted(
    store: Path, backbone: VisionTransformer
) -> None:
    video = clip_bytes(SECONDS[:3], audio=False)  # 3 s of picture
    body = _post(store, backbone, video, wav_bytes(SECONDS))  # 7 s of sound
    assert len(body["seconds"]) == 3
    (note,) = body["notes"]
    audio, duration, cut, until = _cut(note)
    assert audio == pytest.approx(7.0, abs=0.01)
    assert duration == pytest.approx(body["duration_s"], abs=0.01)
    assert until == pytest.approx(3.0, abs=0.01)  # 3 seconds of 1-second spectrograms
    assert cut == pytest.approx(4.0, abs=0.01)
    assert models.AvEventResponse.model_validate(body).notes == [note]


def test_the_videos_own_longer_sound_track_is_noted(
    store: Path, backbone: VisionTransformer
) -> None:
    # frames for the first 2 s only; the sound track plays all 7 seconds (QuickTime: each track
    # declares its own length, where Matroska's one duration would read as a truncated video)
    frames = [i / 2 for i in range(4)]
    video = encode(Clip(SECONDS, fps=2, size=(48, 48), container="mov", frame_times=frames))
    body = _post(store, backbone, video, None)
    assert len(body["seconds"]) == 2
    (note,) = body["notes"]
    audio, _, cut, until = _cut(note)
    assert audio == pytest.approx(7.0, abs=0.01)
    assert until == pytest.approx(2.0, abs=0.01)
    assert cut == pytest.approx(5.0, abs=0.01)


def test_sound_as_long_as_the_video_gets_no_note(store: Path, backbone: VisionTransformer) -> None:
    body = _post(store, backbone, clip_bytes(SECONDS[:3], audio=False), wav_bytes(SECONDS[:3]))
    assert body["notes"] == []
    body = _post(store, backbone, clip_bytes(SECONDS[:4]), None)
    assert body["notes"] == []
    assert models.AvEventResponse.model_validate(body).notes == []
