"""``GET /stream`` through a real server (uvicorn in a thread, a real WebSocket client): a 30 s
stream sent in irregular frames makes exactly the windows its hop implies, each equal to
``POST /classify`` on the same samples cut offline; two sessions at once get only their own
adapters; a pinned session keeps v1 across a swap while a following one moves to v2; the
metrics count the windows sent."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from lookaside.backbone import VisionTransformer
from lookaside.features import FeatureConfig
from service.app import create_app
from tests.integration.service.stream_support import (
    Session,
    as_pcm16,
    changing_signal,
    check_windows_against_classify,
    expected_windows,
    frame_bytes_of,
    metric,
    ready,
    session,
    span_samples,
    stream_through,
    wait_metric,
)
from tests.integration.service.svc_support import (
    ADMIN,
    FEATURES,
    SHORT_FEATURES,
    checkpoint_bytes,
    make_checkpoint,
    put_in_store,
    settings,
)
from tests.live_server import serve_in_thread

KWS = FeatureConfig(target_frames=64, window_hop_frames=24)
"""0.645 s windows every 0.24 s (the checkpoint's own hop)."""
EVT = FeatureConfig(target_frames=128, window_hop_frames=64)
"""1.295 s windows every 0.64 s."""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, svc_backbone: VisionTransformer) -> Iterator[str]:
    """One server for the module: kws (LoRA), evt (LoA-A), esc (bottleneck, no hop), swap v1.
    Its clients may send far ahead of real time and leave results unread (the tests read them
    as they send, but send 30 s in well under 30 s), and no window is dropped for load."""
    store = tmp_path_factory.mktemp("stream") / "store"
    for ckpt in (
        make_checkpoint(svc_backbone, "kws", method="lora", seed=11, features=KWS),
        make_checkpoint(svc_backbone, "evt", method="loaa", seed=12, features=EVT),
        make_checkpoint(svc_backbone, "esc", method="bottleneck", seed=13, features=FEATURES),
        make_checkpoint(svc_backbone, "swap", seed=14, features=SHORT_FEATURES),
    ):
        put_in_store(store, ckpt)
    cfg = settings(
        store,
        stream_max_ahead_s=10_000.0,
        stream_max_unsent=100_000,
        stream_max_pending_windows=1024,
    )
    with serve_in_thread(create_app(cfg, backbone=svc_backbone)) as u:
        yield u


def _check_session(
    answer: dict[str, Any],
    s: Session,
    cuts: list[tuple[int, int]],
    samples: np.ndarray,
    rate: int,
    url: str,
) -> None:
    """One track, every window in order and equal to /classify, no drop, StreamEnd, 1000."""
    assert s.close_code == 1000, (s.close_code, s.close_reason, s.messages[-2:])
    assert s.types() == ["ready"] + ["window"] * len(cuts) + ["end"], s.types()
    windows = s.of_type("window")
    assert {w["track"] for w in windows} == {answer["tracks"][0]["track"]}
    check_windows_against_classify(url, windows, cuts, samples, rate)
    (end,) = s.of_type("end")
    assert (end["windows"], end["dropped"]) == (len(cuts), 0), end
    assert end["seconds"] == pytest.approx(samples.shape[0] / rate, abs=1e-6)
    assert all(w["lag_s"] >= 0 for w in windows)


def test_30s_f32_stream_in_irregular_frames_equals_classify_window_by_window(url: str) -> None:
    rate = 16_000
    samples = changing_signal(30.0, rate, 1, seed=1)
    samples = np.concatenate([samples, changing_signal(2345 / rate, rate, 1, seed=2)])
    cuts = expected_windows(samples.shape[0], 64, 24, rate)
    span = span_samples(64, rate)
    assert len(cuts) == 124
    assert cuts[-1][1] - cuts[-1][0] < span
    opening = {"adapters": ["kws"], "sample_rate": rate, "format": "f32", "top_k": 1000}
    answer, s = stream_through(url, opening, samples, np.random.default_rng(0), rate)

    (track,) = answer["tracks"]
    assert track["adapters"] == [{"adapter": "kws", "version": 1}]
    assert track["window_s"] == pytest.approx(span / rate)
    assert track["hop_s"] == pytest.approx(0.24)
    assert (answer["sample_rate"], answer["format"], answer["channels"]) == (rate, "f32", 1)
    assert answer["follow"] is False
    _check_session(answer, s, cuts, samples, rate, url)


def test_30s_pcm16_stereo_44k_two_adapters_share_a_track_at_the_asked_hop(url: str) -> None:
    rate = 44_100
    samples = as_pcm16(changing_signal(30.0 + 5000 / rate, rate, 2, seed=3))
    cuts = expected_windows(samples.shape[0], 128, 50, rate)
    assert len(cuts) == 59
    assert cuts[-1][1] == samples.shape[0]
    opening = {
        "adapters": "esc, evt",
        "sample_rate": rate,
        "format": "pcm16",
        "channels": 2,
        "hop_s": 0.5,
        "top_k": 1000,
    }
    answer, s = stream_through(url, opening, samples, np.random.default_rng(1), rate)

    (track,) = answer["tracks"]  # the same frames and (asked) hop: one track
    assert track["adapters"] == [
        {"adapter": "esc", "version": 1},
        {"adapter": "evt", "version": 1},
    ]
    assert track["window_s"] == pytest.approx(span_samples(128, rate) / rate)
    assert track["hop_s"] == pytest.approx(0.5)
    assert all([r["adapter"] for r in w["results"]] == ["esc", "evt"] for w in s.of_type("window"))
    _check_session(answer, s, cuts, samples, rate, url)


def _one_session(
    url: str, adapter: str, fmt: str, seed: int
) -> tuple[dict[str, Any], Session, np.ndarray]:
    samples = changing_signal(8.0, 16_000, 1, seed=seed)
    if fmt == "pcm16":
        samples = as_pcm16(samples)
    opening = {"adapters": [adapter], "sample_rate": 16_000, "format": fmt, "top_k": 1000}
    answer, s = stream_through(url, opening, samples, np.random.default_rng(seed), 8000)
    return answer, s, samples


def test_two_sessions_at_once_get_only_their_own_adapter(url: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        kws = pool.submit(_one_session, url, "kws", "f32", 5)
        evt = pool.submit(_one_session, url, "evt", "pcm16", 6)
        runs = {"kws": kws.result(timeout=120), "evt": evt.result(timeout=120)}
    geometry = {"kws": (64, 24), "evt": (128, 64)}
    for name, (answer, s, samples) in runs.items():
        windows = s.of_type("window")
        assert windows, (name, s.types(), s.close_code)
        assert all([r["adapter"] for r in w["results"]] == [name] for w in windows), name
        cuts = expected_windows(samples.shape[0], *geometry[name], 16_000)
        _check_session(answer, s, cuts, samples, 16_000, url)


def _upload_v2(url: str, svc_backbone: VisionTransformer) -> None:
    manifest, weights = checkpoint_bytes(
        make_checkpoint(svc_backbone, "swap", seed=15, features=SHORT_FEATURES)
    )
    r = httpx.post(
        f"{url}/adapters",
        files={
            "manifest": ("manifest.json", manifest),
            "weights": ("adapter.safetensors", weights),
        },
        params={"activate": "true"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    assert (r.json()["version"], r.json()["active"]) == (2, True)


def test_pinned_session_keeps_v1_across_a_swap_and_following_session_moves_to_v2(
    url: str, svc_backbone: VisionTransformer
) -> None:
    rate, half = 16_000, 48_000
    samples = changing_signal(6.0, rate, 1, seed=7)
    data = frame_bytes_of(samples)
    rng = np.random.default_rng(7)
    base = {"adapters": ["swap"], "sample_rate": rate, "format": "f32", "top_k": 1000}
    first = len(expected_windows(half, 64, 64, rate, ended=False))
    cuts = expected_windows(samples.shape[0], 64, 64, rate)
    assert (first, len(cuts)) == (4, 10)
    with (
        session(url, base) as pinned,
        session(url, {**base, "follow": True}) as follow,
    ):
        answers = {"pinned": ready(pinned), "follow": ready(follow)}
        for s in (pinned, follow):
            s.send_chunks(data[: half * 4], 4, rng, rate // 2)
        for s in (pinned, follow):
            s.wait_for("window", first)
        _upload_v2(url, svc_backbone)  # swap@2 is active from here on
        for s in (pinned, follow):
            s.send_chunks(data[half * 4 :], 4, rng, rate // 2)
        for s in (pinned, follow):
            s.end()
    for name, answer in answers.items():
        assert answer["follow"] is (name == "follow")
        assert answer["tracks"][0]["adapters"] == [{"adapter": "swap", "version": 1}], name

    pinned_versions = [w["results"][0]["version"] for w in pinned.of_type("window")]
    assert pinned_versions == [1] * len(cuts)
    _check_session(answers["pinned"], pinned, cuts, samples, rate, url)
    # a window is served by the version active when it is cut: once all its samples arrived
    follow_versions = [w["results"][0]["version"] for w in follow.of_type("window")]
    assert follow_versions == [1 if stop <= half else 2 for _, stop in cuts], follow_versions
    _check_session(answers["follow"], follow, cuts, samples, rate, url)  # each vs its version


def test_metrics_count_the_windows_sent_and_the_live_sessions(url: str) -> None:
    name = "lookaside_stream_windows_total"
    before = {a: metric(url, name, adapter=a) or 0.0 for a in ("kws", "esc")}
    samples = changing_signal(3.0, 16_000, 1, seed=9)
    opening = {"adapters": ["kws"], "sample_rate": 16_000, "format": "f32"}
    with session(url, opening) as s:
        ready(s)
        assert wait_metric(url, "lookaside_stream_sessions", 1.0) == 1.0
        s.send_chunks(frame_bytes_of(samples), 4, np.random.default_rng(9), 4000)
        s.end()
    received = len(s.of_type("window"))
    assert received == len(expected_windows(samples.shape[0], 64, 24, 16_000)) > 5
    assert metric(url, name, adapter="kws") == before["kws"] + received
    assert (metric(url, name, adapter="esc") or 0.0) == before["esc"]
    assert wait_metric(url, "lookaside_stream_sessions", 0.0) == 0.0
