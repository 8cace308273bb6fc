"""POST /classify, /healthz, /readyz, /metrics and every error through real HTTP (in-process ASGI
with the lifespan run), checked against the library run alone (svc_support.reference_scores)."""

from __future__ import annotations

import asyncio
import io
import struct
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from lookaside import clip_windows as featurize_module
from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.features import window_count
from service.app import create_app
from service.logging import REQUEST_ID
from tests.integration.service.svc_support import (
    LABELS,
    SHORT_FEATURES,
    encode,
    expected_top,
    make_checkpoint,
    mp4_with_audio,
    put_in_store,
    reference_scores,
    scores_by_label,
    serve,
    settings,
)

Check = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture
def store(tmp_path: Path, svc_backbone: VisionTransformer) -> dict[str, AdapterCheckpoint]:
    """esc50 v1 (inactive) + v2 (active, bottleneck), speech (multi-label LoRA, 0.64 s windows)."""
    root = tmp_path / "store"
    ckpts = {
        "esc50@1": make_checkpoint(svc_backbone, "esc50", method="bottleneck", seed=1),
        "esc50@2": make_checkpoint(svc_backbone, "esc50", method="bottleneck", seed=2, version=2),
        "speech@1": make_checkpoint(
            svc_backbone,
            "speech",
            method="lora",
            seed=3,
            features=SHORT_FEATURES,
            task_type="multilabel",
        ),
    }
    for ckpt in ckpts.values():
        put_in_store(root, ckpt)
    return ckpts


def _run(tmp_path: Path, backbone: VisionTransformer, check: Check, **overrides: Any) -> None:
    async def main() -> None:
        async with serve(settings(tmp_path / "store", **overrides), backbone) as (_, client):
            await check(client)

    asyncio.run(main())


def _assert_matches(result: dict[str, Any], ref: torch.Tensor, labels: list[str], k: int) -> None:
    got = scores_by_label(result["labels"])
    want = expected_top(ref, labels, k)
    assert list(got) == list(want), (got, want)
    for label, score in want.items():
        assert got[label] == pytest.approx(score, abs=2e-5)


# -- good inputs ------------------------------------------------------------------------------
GOOD_CLIPS: dict[str, Callable[[], bytes]] = {
    "wav_8k_mono": lambda: encode(1.0, rate=8000),
    "ogg_48k_stereo": lambda: encode(1.0, rate=48_000, channels=2, fmt="OGG", subtype="VORBIS"),
    "flac_44k": lambda: encode(1.0, rate=44_100, fmt="FLAC"),
    "mp3": lambda: encode(1.0, rate=44_100, fmt="MP3"),
    "mp4_sound_track": lambda: mp4_with_audio(1.0),
}


@pytest.mark.parametrize("kind", list(GOOD_CLIPS))
def test_good_inputs_match_the_library_alone(
    kind: str,
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    store: dict[str, AdapterCheckpoint],
) -> None:
    clip = GOOD_CLIPS[kind]()

    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/classify", files={"file": (f"clip.{kind}", clip)}, data={"adapter": "esc50"}
        )
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        assert (result["adapter"], result["version"]) == ("esc50", 2)  # the active version
        ref = reference_scores(svc_backbone, store["esc50@2"], clip)
        _assert_matches(result, ref, LABELS, 5)

    _run(tmp_path, svc_backbone, check)


def test_several_adapters_long_clip_raw_body_and_request_id(
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    store: dict[str, AdapterCheckpoint],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clip = encode(3.0, rate=16_000, seed=4)
    seen_ids: list[str] = []
    calls: list[int] = []
    real = featurize_module.extract_windows

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        seen_ids.append(REQUEST_ID.get())
        return real(*args, **kw)

    monkeypatch.setattr(featurize_module, "extract_windows", counting)

    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/classify?adapter=esc50@1,speech,esc50@2&top_k=3",
            content=clip,
            headers={"Content-Type": "audio/wav", "X-Request-ID": "client-id-42"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "client-id-42"
        body = r.json()
        assert body["request_id"] == "client-id-42"
        assert body["duration_s"] == pytest.approx(3.0)
        assert [(x["adapter"], x["version"]) for x in body["results"]] == [
            ("esc50", 1),
            ("speech", 1),
            ("esc50", 2),
        ]
        # esc50@1 and @2 share a feature config: featurised once; speech has its own
        assert len(calls) == 2
        assert seen_ids == ["client-id-42", "client-id-42"]
        for result, key in zip(body["results"], ["esc50@1", "speech@1", "esc50@2"], strict=True):
            ref = reference_scores(svc_backbone, store[key], clip)
            _assert_matches(result, ref, LABELS, 3)
            # 3 s: 3 windows of 1.28 s (esc50) or 5 of 0.64 s (speech); clip = mean of windows
            assert len(result["timeline"]) == ref.shape[0] > 1
            first = result["timeline"][0]
            assert first["start_s"] == 0.0
            assert first["end_s"] > 0
            assert result["timeline"][-1]["end_s"] == pytest.approx(3.0)
            assert scores_by_label(first["labels"]) == pytest.approx(
                expected_top(ref[:1], LABELS, 3), abs=2e-5
            )
        speech_scores = [x["score"] for x in body["results"][1]["labels"]]
        assert sum(speech_scores) > 1.0  # sigmoid scores (multi-label), not a softmax

        r = await client.post(
            "/classify?adapter=esc50",
            content=encode(1.0),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200
        assert len(r.headers["x-request-id"]) >= 8  # made by the server
        assert r.json()["results"][0]["timeline"] is None  # one window: no timeline

    _run(tmp_path, svc_backbone, check)


# -- bad inputs -------------------------------------------------------------------------------
def _truncated_wav() -> bytes:
    data = encode(1.0)
    return data[: len(data) // 2]


def _header_only_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    return buf.getvalue()


BAD: list[tuple[str, Callable[[], bytes], str, str, int, str]] = [
    # id, clip, filename, adapter, status, words the detail must contain
    ("corrupt", lambda: bytes(range(256)) * 20, "x.wav", "esc50", 415, "not a recognised audio"),
    ("zero_length", lambda: b"", "x.wav", "esc50", 422, "empty"),
    ("truncated_wav", _truncated_wav, "x.wav", "esc50", 422, "truncated"),
    ("no_samples", _header_only_wav, "x.wav", "esc50", 422, "zero audio samples"),
    ("text_as_mp3", lambda: b"hello, this is not audio\n" * 40, "x.mp3", "esc50", 415, "audio"),
    ("over_byte_limit", lambda: encode(8.0), "x.wav", "esc50", 413, "LOOKASIDE_MAX_MEDIA_BYTES"),
    ("over_duration", lambda: encode(5.0, rate=8000), "x.wav", "esc50", 413, "the limit is 4 s"),
    ("unknown_adapter", lambda: encode(1.0), "x.wav", "nope", 404, "esc50, speech"),
    ("unknown_version", lambda: encode(1.0), "x.wav", "esc50@7", 404, "1, 2 (active: 2)"),
    ("no_adapter", lambda: encode(1.0), "x.wav", "", 422, "adapter"),
    ("too_short", lambda: encode(0.01), "x.wav", "esc50", 422, "25 ms"),
]


@pytest.mark.parametrize(
    ("clip", "filename", "adapter", "status", "words"),
    [b[1:] for b in BAD],
    ids=[b[0] for b in BAD],
)
def test_bad_input_fails_alone_with_a_message(
    clip: Callable[[], bytes],
    filename: str,
    adapter: str,
    status: int,
    words: str,
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    store: dict[str, AdapterCheckpoint],
) -> None:
    good = encode(1.0, seed=7)

    async def check(client: httpx.AsyncClient) -> None:
        before = (await client.post("/classify?adapter=esc50", content=good, headers=_WAV)).json()
        r = await client.post(
            "/classify", files={"file": (filename, clip())}, data={"adapter": adapter}
        )
        assert r.status_code == status, r.text
        assert words in r.json()["detail"], r.json()
        after = (await client.post("/classify?adapter=esc50", content=good, headers=_WAV)).json()
        assert before["results"] == after["results"]  # nothing the bad request did stayed behind

    _run(tmp_path, svc_backbone, check, max_media_bytes=200_000, max_audio_seconds=4.0)


_WAV = {"Content-Type": "audio/wav"}


def test_request_shape_errors(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/classify?adapter=esc50", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 415
        assert "multipart/form-data" in r.json()["detail"]
        r = await client.post("/classify", data={"adapter": "esc50"}, files={"other": ("a", b"1")})
        assert r.status_code == 422
        assert "file" in r.json()["detail"]
        r = await client.post(
            "/classify",
            files={"file": ("a.wav", encode(1.0))},
            data={"adapter": "esc50", "top_k": "0"},
        )
        assert r.status_code == 422
        assert "top_k" in r.json()["detail"]
        r = await client.post("/classify?adapter=esc50&top_k=-1", content=encode(1.0), headers=_WAV)
        assert r.status_code == 422
        big = struct.pack("<I", 1)  # Content-Length over the limit is refused before reading
        r = await client.post("/classify?adapter=esc50", content=big * 100_000, headers=_WAV)
        assert r.status_code == 413
        assert "over the 100000 bytes allowed (LOOKASIDE_MAX_MEDIA_BYTES = 100000)" in r.text
        # multipart: the refusal names the documented per-file limit and the framing it adds,
        # not an unexplained sum of the two
        r = await client.post(
            "/classify", data={"adapter": "esc50"}, files={"file": ("a.wav", big * 50_000)}
        )
        assert r.status_code == 413
        detail = r.json()["detail"]
        assert f"over the {100_000 + 64 * 1024} bytes allowed" in detail
        assert "LOOKASIDE_MAX_MEDIA_BYTES = 100000 per file, plus 64 KiB of multipart" in detail

    _run(tmp_path, svc_backbone, check, max_media_bytes=100_000)


# -- overload, timeouts, readiness ------------------------------------------------------------
def test_queue_full_is_429_with_retry_after(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    clip = encode(1.0)

    async def check(client: httpx.AsyncClient) -> None:
        rs = await asyncio.gather(
            *[client.post("/classify?adapter=esc50", content=clip, headers=_WAV) for _ in range(6)]
        )
        codes = sorted(r.status_code for r in rs)
        assert 200 in codes, codes
        assert 429 in codes, codes
        full = next(r for r in rs if r.status_code == 429)
        assert full.headers["retry-after"] == "1"
        assert "LOOKASIDE_QUEUE_CAPACITY" in full.json()["detail"]

    # one queued job at a time, and the batcher waits 1.5 s for more rows: the rest overflow
    _run(tmp_path, svc_backbone, check, queue_capacity=1, max_wait_ms=1500, max_batch_size=64)


def test_request_past_its_timeout_is_504(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post("/classify?adapter=esc50", content=encode(1.0), headers=_WAV)
        assert r.status_code == 504, r.text
        assert "LOOKASIDE_REQUEST_TIMEOUT_S" in r.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200

    _run(
        tmp_path,
        svc_backbone,
        check,
        request_timeout_s=0.3,
        max_wait_ms=1500,
        max_batch_size=64,
        warmup=False,
    )


def test_not_ready_and_shutting_down_are_503(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    async def main() -> None:
        app = create_app(settings(tmp_path / "store"), backbone=svc_backbone)
        transport = httpx.ASGITransport(app=app)  # lifespan not run: still starting
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            r = await client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["reason"] == "starting"
            r = await client.post("/classify?adapter=esc50", content=encode(1.0), headers=_WAV)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
        async with serve(settings(tmp_path / "store"), svc_backbone) as (app, client):
            r = await client.get("/readyz")
            assert r.status_code == 200
            assert r.json() == {
                "ready": True,
                "reason": None,
                "adapters": 2,
            }
            app.state.lookaside.shutting_down = True
            r = await client.post("/classify?adapter=esc50", content=encode(1.0), headers=_WAV)
            assert r.status_code == 503
            assert "shutting down" in r.json()["detail"]
            assert r.headers["retry-after"] == "1"
            assert (await client.get("/readyz")).json()["reason"] == "shutting down"
            app.state.lookaside.shutting_down = False

    asyncio.run(main())


def test_shutdown_answers_every_accepted_request(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    clip = encode(1.0)

    async def main() -> None:
        cfg = settings(tmp_path / "store", max_wait_ms=300, max_batch_size=64)
        async with serve(cfg, svc_backbone) as (app, client):
            tasks = [
                asyncio.create_task(
                    client.post("/classify?adapter=esc50", content=clip, headers=_WAV)
                )
                for _ in range(8)
            ]
            engine = app.state.lookaside.engine
            while engine.queue_depth < 8:
                await asyncio.sleep(0.01)
            # the lifespan's exit drains the queue: every accepted request is answered
            await asyncio.to_thread(engine.stop, drain=True)
            results = await asyncio.gather(*tasks)
            assert [r.status_code for r in results] == [200] * 8

    asyncio.run(main())


# -- metrics and docs -------------------------------------------------------------------------
def test_metrics_and_openapi(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        clip = encode(1.0)
        await client.post("/classify?adapter=esc50,speech", content=clip, headers=_WAV)
        await client.post("/classify?adapter=nope", content=clip, headers=_WAV)
        text = (await client.get("/metrics")).text
        for needle in (
            'lookaside_requests_total{adapter="esc50",route="/classify",status="200"} 1.0',
            'lookaside_requests_total{adapter="speech",route="/classify",status="200"} 1.0',
            'lookaside_requests_total{adapter="",route="/classify",status="404"} 1.0',
            "lookaside_queue_wait_seconds_count",
            "lookaside_featurize_seconds_count",
            "lookaside_forward_seconds_count",
            'lookaside_request_seconds_count{route="/classify"}',
            "lookaside_batch_rows_bucket",
            "lookaside_batch_adapters_bucket",
            "lookaside_queue_depth 0.0",
            "lookaside_adapters_resident 2.0",
            "lookaside_adapters_in_store 2.0",
            'lookaside_adapter_load_seconds_count{tier="disk"} 2.0',
        ):
            assert needle in text, needle
        assert "esc50,speech" not in text  # real labels, never joined strings
        schema = (await client.get("/openapi.json")).json()
        post = schema["paths"]["/classify"]["post"]
        assert {"multipart/form-data", "application/octet-stream"} <= set(
            post["requestBody"]["content"]
        )
        assert {"404", "413", "415", "422", "429", "503", "504"} <= set(post["responses"])
        assert (await client.get("/docs")).status_code == 200

    _run(tmp_path, svc_backbone, check)


def test_two_apps_in_one_process_have_their_own_metrics(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    async def main() -> None:
        async with (
            serve(settings(tmp_path / "store"), svc_backbone) as (_, a),
            serve(settings(tmp_path / "store"), svc_backbone) as (_, b),
        ):
            await a.post("/classify?adapter=esc50", content=encode(1.0), headers=_WAV)
            assert 'status="200"' in (await a.get("/metrics")).text
            assert 'adapter="esc50",route="/classify"' not in (await b.get("/metrics")).text

    asyncio.run(main())


def test_a_model_failure_is_an_opaque_500_for_its_request_only(
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    store: dict[str, AdapterCheckpoint],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clip = encode(1.0)

    async def main() -> None:
        cfg = settings(tmp_path / "store", max_wait_ms=200, max_batch_size=64)
        async with serve(cfg, svc_backbone) as (app, client):
            model = app.state.lookaside.engine.model
            real = model.forward

            def forward(spec: torch.Tensor, ids: list[str | None]) -> list[torch.Tensor | None]:
                if "speech@1" in ids:
                    raise RuntimeError("secret internal detail")
                return real(spec, ids)

            model.forward = forward
            rs = await asyncio.gather(
                client.post("/classify?adapter=esc50", content=clip, headers=_WAV),
                client.post("/classify?adapter=speech", content=clip, headers=_WAV),
                client.post("/classify?adapter=esc50@1", content=clip, headers=_WAV),
            )
            assert [r.status_code for r in rs] == [200, 500, 200]
            assert "secret" not in rs[1].text
            assert "server log" in rs[1].json()["detail"]
            assert rs[1].headers["x-request-id"] in rs[1].json()["detail"]
            model.forward = real
            r = await client.post("/classify?adapter=speech", content=clip, headers=_WAV)
            assert r.status_code == 200

    asyncio.run(main())
    assert "secret internal detail" in caplog.text  # the trace is logged


# -- bounded work: adapters per request, windows per request, decoded samples ----------------------
def test_more_adapters_than_the_queue_can_hold_get_422_naming_the_limit(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    clip = encode(1.0)

    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/classify?adapter=esc50@1,speech,esc50@2", content=clip, headers=_WAV
        )
        assert r.status_code == 422, r.text  # not a 429 that no retry could ever cure
        detail = r.json()["detail"]
        assert "3 adapters" in detail
        assert "at most 2 jobs" in detail
        assert "LOOKASIDE_QUEUE_CAPACITY" in detail
        r = await client.post("/classify?adapter=esc50@1,speech", content=clip, headers=_WAV)
        assert r.status_code == 200, r.text

    _run(tmp_path, svc_backbone, check, queue_capacity=2)


@pytest.fixture
def extract_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ``extract_windows`` call the featurize path makes (windows built)."""
    calls: list[int] = []
    real = featurize_module.extract_windows

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(featurize_module, "extract_windows", counting)
    return calls


@pytest.mark.parametrize("spare", [0, -1])
def test_windows_over_the_request_limit_are_refused_before_any_feature(
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    store: dict[str, AdapterCheckpoint],
    extract_calls: list[int],
    spare: int,
) -> None:
    clip = encode(3.0, rate=16_000)
    names = ["esc50@1", "speech", "esc50@2"]
    configs = [store[n if "@" in n else f"{n}@1"].manifest.features for n in names]
    rows = sum(window_count(48_000, 16_000, cfg) for cfg in configs)
    assert rows > len(names)  # several windows per adapter

    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post(f"/classify?adapter={','.join(names)}", content=clip, headers=_WAV)
        if spare < 0:
            assert r.status_code == 413, r.text
            body = r.json()
            assert body["reason"] == "too_many_rows"
            assert f"makes {rows} windows" in body["detail"]
            assert f"limit of {rows - 1} windows" in body["detail"]
            assert "LOOKASIDE_MAX_REQUEST_ROWS" in body["detail"]
            assert extract_calls == []  # refused by arithmetic, before any feature was computed
        else:
            assert r.status_code == 200, r.text
            assert sum(len(x["timeline"] or [None]) for x in r.json()["results"]) == rows

    _run(tmp_path, svc_backbone, check, max_request_rows=rows + spare)


@pytest.mark.parametrize("spare", [0, -1])
def test_feature_bytes_over_the_request_limit_are_refused_before_any_feature(
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    store: dict[str, AdapterCheckpoint],
    extract_calls: list[int],
    spare: int,
) -> None:
    seconds = 60.0
    clip = encode(seconds, rate=16_000)
    names = ["esc50@1", "esc50@2", "speech"]
    distinct = dict.fromkeys(store[n if "@" in n else f"{n}@1"].manifest.features for n in names)
    samples = int(seconds * 16_000)
    total = sum(
        window_count(samples, 16_000, c) * c.target_frames * c.num_mel_bins * 4 for c in distinct
    )
    assert total > 1024 * 1024  # above the setting's floor, so the limit below is valid

    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post(f"/classify?adapter={','.join(names)}", content=clip, headers=_WAV)
        if spare < 0:
            assert r.status_code == 413, r.text
            body = r.json()
            assert body["reason"] == "too_many_features"
            assert "LOOKASIDE_MAX_REQUEST_FEATURE_BYTES" in body["detail"]
            assert extract_calls == []  # refused by arithmetic, before any feature was computed
        else:
            assert r.status_code == 200, r.text
            assert len(extract_calls) == len(distinct)  # shared settings featurised once

    _run(
        tmp_path,
        svc_backbone,
        check,
        max_request_feature_bytes=total + spare,
        max_request_rows=100_000,
    )


def test_audio_over_the_decoded_sample_budget_gets_413(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    stereo = encode(1.0, rate=16_000, channels=2)  # 32,000 samples

    async def check(client: httpx.AsyncClient) -> None:
        r = await client.post("/classify?adapter=esc50", content=stereo, headers=_WAV)
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["reason"] == "too_large"
        assert "32,000 samples" in body["detail"]
        assert "LOOKASIDE_MAX_DECODED_SAMPLES" in body["detail"]
        r = await client.post("/classify?adapter=esc50", content=encode(1.0), headers=_WAV)
        assert r.status_code == 200, r.text  # 16,000 samples: within the budget

    _run(tmp_path, svc_backbone, check, max_decoded_samples=16_000)


def test_openapi_marks_the_adapter_field_required(
    tmp_path: Path, svc_backbone: VisionTransformer, store: dict[str, AdapterCheckpoint]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()
        for path, part in (("/classify", "file"), ("/av-event", "video")):
            body = schema["paths"][path]["post"]["requestBody"]
            form = body["content"]["multipart/form-data"]["schema"]
            assert set(form["required"]) == {part, "adapter"}
        query = schema["paths"]["/classify"]["post"]["parameters"]
        (adapter,) = [p for p in query if p["name"] == "adapter"]
        assert "Required for raw-body uploads" in adapter["description"]

    _run(tmp_path, svc_backbone, check)
