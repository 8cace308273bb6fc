"""``POST /av-event`` through HTTP (in-process app, tiny two-stream backbone): per-second labels
and events equal the library's ``MultiAdapterModel.forward_av`` run on each window alone; bad
videos fail alone with clear 4xx while a concurrent ``/classify`` succeeds; AV rows batch with AV
rows in the engine and never with audio rows."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.features import FeatureConfig
from lookaside.model import MultiAdapterModel
from lookaside.video import av_inputs, decode_video
from service.engine import Engine
from tests.av_synth import Second, wav_bytes
from tests.integration.service.av_support import (
    AV_FEATURES,
    AV_LABELS,
    BLUE,
    GREY,
    RED,
    SECONDS,
    av_checkpoint,
    clip_bytes,
    expected_events,
    reference_av,
    tiny_av,
)
from tests.integration.service.svc_support import (
    encode as encode_wav,
)
from tests.integration.service.svc_support import (
    expected_top,
    make_checkpoint,
    put_in_store,
    reference_scores,
    scores_by_label,
    serve,
    settings,
)


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny_av()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, backbone: VisionTransformer) -> Path:
    root = tmp_path_factory.mktemp("store")
    put_in_store(root, av_checkpoint(backbone, "scene", seed=0))
    put_in_store(root, _v2(backbone))
    put_in_store(root, av_checkpoint(backbone, "other", seed=2))
    put_in_store(root, make_checkpoint(backbone, "snd", features=FeatureConfig(target_frames=64)))
    return root


def _v2(backbone: VisionTransformer) -> AdapterCheckpoint:
    return av_checkpoint(backbone, "scene", seed=1, version=2)


def post_av(
    client: httpx.AsyncClient,
    video: bytes,
    adapter: str | None = "scene",
    audio: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    files: dict[str, Any] = {"video": ("clip.mkv", video, "video/x-matroska")}
    if audio is not None:
        files["audio"] = ("sound.wav", audio, "audio/wav")
    data = {"adapter": adapter} if adapter is not None else {}
    return client.post("/av-event", files=files, data=data, headers=headers)


def test_seconds_and_events_equal_the_library_window_by_window(
    store: Path, backbone: VisionTransformer
) -> None:
    asyncio.run(_seconds_and_events_equal_the_library_window_by_window(store, backbone))


async def _seconds_and_events_equal_the_library_window_by_window(
    store: Path, backbone: VisionTransformer
) -> None:
    video = clip_bytes()
    async with serve(settings(store), backbone) as (_, client):
        r = await post_av(client, video, "scene@1", headers={"X-Request-ID": "av-req-1"})
        r2 = await post_av(client, video, "scene")  # the active version (2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"] == "av-req-1"
    assert (body["adapter"], body["version"]) == ("scene", 1)
    assert body["duration_s"] == pytest.approx(7.0, abs=0.6)
    probs = reference_av(backbone, av_checkpoint(backbone, "scene", seed=0), video)
    assert [s["t"] for s in body["seconds"]] == list(range(7))
    for second, row in zip(body["seconds"], probs, strict=True):
        assert second["label"] == AV_LABELS[int(row.argmax())]
        assert second["score"] == pytest.approx(float(row.max()), abs=1e-5)
    events = [(e["start_s"], e["end_s"], e["label"], e["score"]) for e in body["events"]]
    want = expected_events(probs)
    assert [e[:3] for e in events] == [e[:3] for e in want]
    assert [e[3] for e in events] == pytest.approx([e[3] for e in want], abs=1e-5)
    assert all(e[2] != "background" for e in events)

    assert r2.status_code == 200, r2.text
    assert r2.json()["version"] == 2
    probs2 = reference_av(backbone, _v2(backbone), video)
    assert [s["score"] for s in r2.json()["seconds"]] == pytest.approx(
        [float(p.max()) for p in probs2], abs=1e-5
    )


def test_a_separate_audio_file_supplies_the_sound(store: Path, backbone: VisionTransformer) -> None:
    asyncio.run(_a_separate_audio_file_supplies_the_sound(store, backbone))


async def _a_separate_audio_file_supplies_the_sound(
    store: Path, backbone: VisionTransformer
) -> None:
    silent_video = clip_bytes(audio=False)
    sound = wav_bytes(SECONDS)
    async with serve(settings(store), backbone) as (_, client):
        refused = await post_av(client, silent_video, "scene@1")
        r = await post_av(client, silent_video, "scene@1", audio=sound)
    assert refused.status_code == 422
    assert refused.json()["reason"] == "no_audio_track"
    assert "separate audio file" in refused.json()["detail"]
    assert r.status_code == 200, r.text
    probs = reference_av(backbone, av_checkpoint(backbone, "scene", seed=0), silent_video, sound)
    assert [s["score"] for s in r.json()["seconds"]] == pytest.approx(
        [float(p.max()) for p in probs], abs=1e-5
    )


def _zero_frame_video() -> bytes:
    """A Matroska file whose video track holds no frame (its sound is fine)."""
    import io

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.height, video.width, video.pix_fmt = 48, 48, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=16_000)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16_000), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 16_000, 0
        for packet in audio.encode(frame):
            out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return buf.getvalue()


BAD = [
    # (id, video bytes, status, reason, words in the detail)
    ("corrupt", b"\x00not a video at all" * 50, 415, "not_video", "not a readable video"),
    ("truncated", clip_bytes()[: len(clip_bytes()) // 2], 422, "truncated", "truncated"),
    ("no_audio_track", clip_bytes(audio=False), 422, "no_audio_track", "no audio track"),
    ("too_long", clip_bytes(SECONDS * 2), 413, "too_long", "limit is 10 s"),
    ("zero_frames", _zero_frame_video(), 422, "no_frames", "no decodable frames"),
    ("empty", b"", 422, "empty", "empty"),
]


def test_bad_videos_fail_alone_while_classify_succeeds(
    store: Path, backbone: VisionTransformer
) -> None:
    asyncio.run(_bad_videos_fail_alone_while_classify_succeeds(store, backbone))


async def _bad_videos_fail_alone_while_classify_succeeds(
    store: Path, backbone: VisionTransformer
) -> None:
    wav = encode_wav(1.5, seed=3)
    cfg = settings(store, max_video_seconds=10.0, max_wait_ms=50.0)
    async with serve(cfg, backbone) as (_, client):
        good = post_av(client, clip_bytes(), "scene@1")
        bad = [post_av(client, video, "scene@1") for _, video, *_ in BAD]
        classify = client.post(
            "/classify", files={"file": ("x.wav", wav, "audio/wav")}, data={"adapter": "snd"}
        )
        answers = await asyncio.gather(good, classify, *bad)
    good_r, classify_r, *bad_rs = answers
    assert good_r.status_code == 200, good_r.text
    assert classify_r.status_code == 200, classify_r.text
    snd = make_checkpoint(backbone, "snd", features=FeatureConfig(target_frames=64))
    want = expected_top(reference_scores(backbone, snd, wav), snd.manifest.labels, 5)
    got = scores_by_label(classify_r.json()["results"][0]["labels"])
    assert got == pytest.approx(want, abs=1e-5)
    for (name, _, status, reason, words), r in zip(BAD, bad_rs, strict=True):
        assert r.status_code == status, (name, r.text)
        assert r.json()["reason"] == reason, name
        assert words in r.json()["detail"], (name, r.json())


def test_request_errors_name_the_fix(store: Path, backbone: VisionTransformer) -> None:
    asyncio.run(_request_errors_name_the_fix(store, backbone))


async def _request_errors_name_the_fix(store: Path, backbone: VisionTransformer) -> None:
    video = clip_bytes(SECONDS[:2])
    async with serve(settings(store), backbone) as (_, client):
        unknown = await post_av(client, video, "nope")
        unknown_version = await post_av(client, video, "scene@9")
        audio_only = await post_av(client, video, "snd")
        no_adapter = await post_av(client, video, None)
        no_video = await client.post(
            "/av-event",
            files={"audio": ("s.wav", encode_wav(1.0), "audio/wav")},
            data={"adapter": "scene"},
        )
        raw = await client.post(
            "/av-event?adapter=scene", content=video, headers={"content-type": "video/mp4"}
        )
        av_on_classify = await client.post(
            "/classify",
            files={"file": ("x.wav", encode_wav(1.0), "audio/wav")},
            data={"adapter": "scene"},
        )
        by_query = await client.post(
            "/av-event?adapter=other", files={"video": ("c.mkv", video, "video/x-matroska")}
        )
    assert unknown.status_code == 404
    assert "other" in unknown.json()["detail"]
    assert "scene" in unknown.json()["detail"]
    assert unknown_version.status_code == 404
    assert "1, 2" in unknown_version.json()["detail"]
    assert audio_only.status_code == 422
    assert "POST /classify" in audio_only.json()["detail"]
    assert no_adapter.status_code == 422
    assert "adapter=NAME" in no_adapter.json()["detail"]
    assert no_video.status_code == 422
    assert "-F video=@" in no_video.json()["detail"]
    assert raw.status_code == 415
    assert "multipart/form-data" in raw.json()["detail"]
    assert av_on_classify.status_code == 422
    assert "POST /av-event" in av_on_classify.json()["detail"]
    assert by_query.status_code == 200, by_query.text
    assert by_query.json()["adapter"] == "other"
    assert len(by_query.json()["seconds"]) == 2


def test_past_the_request_timeout_is_504(store: Path, backbone: VisionTransformer) -> None:
    async def main() -> httpx.Response:
        async with serve(settings(store, request_timeout_s=0.001), backbone) as (_, client):
            # the active version is resident (preloaded): the featurize wait runs out
            response: httpx.Response = await post_av(client, clip_bytes(), "scene")
            return response

    r = asyncio.run(main())
    assert r.status_code == 504, r.text
    assert "LOOKASIDE_REQUEST_TIMEOUT_S" in r.json()["detail"]


def test_queue_full_is_429_with_retry_after(store: Path, backbone: VisionTransformer) -> None:
    video = clip_bytes(SECONDS[:3])

    async def main() -> list[httpx.Response]:
        # one queued job at a time, and the batcher waits 2.5 s for more rows: the rest overflow
        cfg = settings(store, queue_capacity=1, max_wait_ms=2500, max_batch_size=64)
        async with serve(cfg, backbone) as (_, client):
            return list(await asyncio.gather(*[post_av(client, video) for _ in range(4)]))

    rs = asyncio.run(main())
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes, codes
    assert 429 in codes, codes
    full = next(r for r in rs if r.status_code == 429)
    assert full.headers["retry-after"] == "1"
    assert "LOOKASIDE_QUEUE_CAPACITY" in full.json()["detail"]


def test_av_rows_batch_with_av_rows_and_never_with_audio_rows(
    backbone: VisionTransformer,
) -> None:
    """Queued before the worker starts: two AV jobs of two AV adapters (same window length)
    form one batch, the audio job another; each answer equals its window run alone."""
    scene, other = av_checkpoint(backbone, "scene", 0), av_checkpoint(backbone, "other", 2)
    snd = make_checkpoint(backbone, "snd", features=FeatureConfig(target_frames=64))
    engine = Engine(backbone, device=torch.device("cpu"), max_batch_size=8, max_wait_ms=1.0)
    for ckpt in (scene, other, snd):
        engine.load_adapter(ckpt).result(timeout=30)
    size = backbone.cfg.image_size
    spec, pixels = av_inputs(decode_video(clip_bytes(), frame_size=size), AV_FEATURES, size)
    spec, pixels = spec[:6].reshape(2, 3, *spec.shape[1:]), pixels[:6].reshape(2, 3, 3, *size)
    audio = torch.randn(2, 64, 128)
    try:
        f_audio = engine.submit(audio[:1], snd.manifest.id)
        f_scene = engine.submit_av(spec, pixels, scene.manifest.id)
        f_audio2 = engine.submit(audio[1:], snd.manifest.id)
        f_other = engine.submit_av(spec[1:], pixels[1:], other.manifest.id)
        engine.start()
        results = [f.result(timeout=60) for f in (f_audio, f_scene, f_audio2, f_other)]
    finally:
        engine.stop()
    assert engine.batches_run == 2  # one audio batch (2 rows), one AV batch (3 windows, 2 adapters)
    assert results[1].shape == (2, 3, len(AV_LABELS))
    assert results[3].shape == (1, 3, len(AV_LABELS))
    for ckpt, windows, out in ((scene, [0, 1], results[1]), (other, [1], results[3])):
        bank = AdapterBank.for_backbone(backbone, capacity=1)
        ckpt.load_into(bank, "ref")
        model = MultiAdapterModel(backbone, bank).eval()
        with torch.inference_mode():
            for row, w in enumerate(windows):
                (ref,) = model.forward_av(spec[w : w + 1], pixels[w : w + 1], ["ref"])
                assert ref is not None
                torch.testing.assert_close(out[row], ref.float(), atol=1e-5, rtol=1e-4)
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    snd.load_into(bank, "ref")
    model = MultiAdapterModel(backbone, bank).eval()
    with torch.inference_mode():
        for i, out in ((0, results[0]), (1, results[2])):
            (ref,) = model(audio[i : i + 1], ["ref"])
            assert ref is not None
            torch.testing.assert_close(out[0], ref.float(), atol=1e-5, rtol=1e-4)


def test_after_an_av_batch_a_waiting_audio_job_goes_first(backbone: VisionTransformer) -> None:
    """Two AV jobs of different window lengths (two AV batches) queued before an audio job: the
    audio job runs between them, not after both."""
    scene = av_checkpoint(backbone, "scene", 0)
    snd = make_checkpoint(backbone, "snd", features=FeatureConfig(target_frames=64))
    engine = Engine(backbone, device=torch.device("cpu"), max_batch_size=8, max_wait_ms=1.0)
    for ckpt in (scene, snd):
        engine.load_adapter(ckpt).result(timeout=30)
    size = backbone.cfg.image_size
    spec, pixels = av_inputs(decode_video(clip_bytes(), frame_size=size), AV_FEATURES, size)
    order: list[str] = []
    try:
        jobs = {
            "av 3 s": engine.submit_av(spec[None, :3], pixels[None, :3], scene.manifest.id),
            "av 2 s": engine.submit_av(spec[None, :2], pixels[None, :2], scene.manifest.id),
            "audio": engine.submit(torch.randn(1, 64, 128), snd.manifest.id),
        }
        for name, fut in jobs.items():
            fut.add_done_callback(lambda _, n=name: order.append(n))  # type: ignore[misc]
        engine.start()
        for fut in jobs.values():
            fut.result(timeout=60)
    finally:
        engine.stop()
    assert order == ["av 3 s", "audio", "av 2 s"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_av_jobs_on_cuda_equal_the_cpu_reference(backbone: VisionTransformer) -> None:
    """The pinned-staging, non-blocking copy path of AV jobs (frames and spectrograms)."""
    scene = av_checkpoint(backbone, "scene", 0)
    engine = Engine(tiny_av().to("cuda"), device=torch.device("cuda"), max_wait_ms=1.0)
    engine.load_adapter(scene).result(timeout=60)
    size = backbone.cfg.image_size
    spec, pixels = av_inputs(decode_video(clip_bytes(), frame_size=size), AV_FEATURES, size)
    spec, pixels = spec[:6].reshape(2, 3, *spec.shape[1:]), pixels[:6].reshape(2, 3, 3, *size)
    engine.start()
    try:
        out = engine.submit_av(spec, pixels, scene.manifest.id).result(timeout=60)
    finally:
        engine.stop()
    assert out.device.type == "cpu"
    bank = AdapterBank.for_backbone(backbone, capacity=1)
    scene.load_into(bank, "ref")
    model = MultiAdapterModel(backbone, bank).eval()
    with torch.inference_mode():
        ref = model.logits_av(spec, pixels, "ref")
    # TF32 convolutions on CUDA: close, not bit-equal.
    torch.testing.assert_close(out, ref.float(), atol=2e-3, rtol=2e-3)


# -- a briefly trained adapter finds the switches ------------------------------------------------
EVENT_SECONDS = {"Bark": Second(RED, 440.0), "Flute": Second(BLUE, 2600.0)}
LAYOUT = ["background"] * 2 + ["Bark"] * 3 + ["background"] * 2 + ["Flute"] * 2 + ["background"]
"""The test video: Bark during [2, 5) s, Flute during [7, 9) s."""


def _video_of(layout: list[str]) -> bytes:
    return clip_bytes([EVENT_SECONDS.get(label, Second(GREY, None)) for label in layout])


def _trained(backbone: VisionTransformer, segments: int) -> AdapterCheckpoint:
    """AV-PEA trained for a few dozen full-batch steps on random layouts (library only)."""
    rng = random.Random(0)
    layouts = []
    for _ in range(6):
        layout = ["background"] * 10
        for label in rng.sample(list(EVENT_SECONDS), 2):
            start = rng.randint(0, 8)
            end = min(10, start + rng.randint(2, 4))
            layout[start:end] = [label] * (end - start)
        layouts.append(layout)
    size = backbone.cfg.image_size
    inputs = [
        av_inputs(decode_video(_video_of(lay), frame_size=size), AV_FEATURES, size)
        for lay in layouts
    ]
    spec = torch.stack([s for s, _ in inputs]).reshape(-1, segments, *inputs[0][0].shape[1:])
    pixels = torch.stack([p for _, p in inputs]).reshape(-1, segments, 3, *size)
    target = torch.tensor([AV_LABELS.index(lab) for lay in layouts for lab in lay])
    bank = AdapterBank.for_backbone(backbone, trainable=True)
    bank.add("t", "avpea", {"temporal_heads": 2, "segments": segments}, HeadConfig(num_classes=3))
    model = MultiAdapterModel(backbone, bank)
    opt = torch.optim.Adam(bank.trainable_parameters("t"), lr=5e-3)
    for _ in range(20):
        loss = F.cross_entropy(model.logits_av(spec, pixels, "t").flatten(0, 1), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return AdapterCheckpoint.from_bank(
        bank,
        "t",
        name="trained",
        version=1,
        task="synthetic events",
        task_type="multiclass",
        labels=AV_LABELS,
        features=AV_FEATURES,
        backbone=backbone,
    )


def test_a_trained_adapter_finds_the_events_at_the_right_seconds(
    tmp_path: Path, backbone: VisionTransformer
) -> None:
    torch.manual_seed(0)
    put_in_store(tmp_path, _trained(backbone, segments=5))  # a 10 s clip runs as 2 windows

    async def main() -> dict[str, Any]:
        async with serve(settings(tmp_path), backbone) as (_, client):
            r = await post_av(client, _video_of(LAYOUT), "trained")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    body = asyncio.run(main())
    assert [s["label"] for s in body["seconds"]] == LAYOUT
    assert [(e["start_s"], e["end_s"], e["label"]) for e in body["events"]] == [
        (2, 5, "Bark"),
        (7, 9, "Flute"),
    ]


def test_rows_over_the_request_limit_and_a_sound_over_the_budget_get_413(
    store: Path, backbone: VisionTransformer
) -> None:
    async def main() -> None:
        video = clip_bytes()  # 7 s: 7 rows ([0, 3), [3, 6), [6, 7))
        async with serve(settings(store, max_request_rows=6), backbone) as (_, client):
            r = await post_av(client, video, "scene")
            assert r.status_code == 413, r.text
            body = r.json()
            assert body["reason"] == "too_many_rows"
            assert "7 rows" in body["detail"]
            assert "LOOKASIDE_MAX_REQUEST_ROWS" in body["detail"]
        # 7 s of 16 kHz sound is 112,000 samples: over a budget of 100,000
        async with serve(settings(store, max_decoded_samples=100_000), backbone) as (_, client):
            r = await post_av(client, video, "scene")
            assert r.status_code == 413, r.text
            assert r.json()["reason"] == "too_large"
            assert "LOOKASIDE_MAX_DECODED_SAMPLES" in r.json()["detail"]
        async with serve(settings(store, max_request_rows=7), backbone) as (_, client):
            assert (await post_av(client, video, "scene")).status_code == 200

    asyncio.run(main())
