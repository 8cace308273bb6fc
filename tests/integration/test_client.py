"""``lookaside.client`` and ``lookaside-train push`` against a real server (uvicorn on 127.0.0.1,
the service's own app, the tiny two-stream backbone that serves clip and audio-visual adapters).

Every method is called through :class:`Client` and :class:`AsyncClient`; answers are compared with
the library's independent references (``reference_scores``, ``reference_av``: no service code),
errors with the server's own messages, and push refusals with the store on disk.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from lookaside.client.models import ClassifyResponse
from lookaside.features import FeatureConfig
from service.app import create_app
from tests.integration.service.av_support import (
    AV_BACKBONE,
    AV_LABELS,
    av_checkpoint,
    clip_bytes,
    reference_av,
    tiny_av,
)
from tests.integration.service.svc_support import (
    ADMIN,
    LABELS,
    encode,
    expected_top,
    make_checkpoint,
    put_in_store,
    reference_scores,
    settings,
    tiny,
)
from tests.live_server import free_port, serve_in_thread
from training.cli import main

FEATURES = FeatureConfig(target_frames=64)
"""0.64 s windows: a 2 s clip has several, so answers carry a timeline."""
MAX_MEDIA_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Served:
    url: str
    store: Path
    backbone: VisionTransformer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = tmp_path_factory.mktemp("store")
    backbone = tiny_av()
    for ckpt in (_snd(backbone), _other(backbone), av_checkpoint(backbone, "scene", seed=0)):
        put_in_store(store, ckpt)
    cfg = settings(store, backbone=AV_BACKBONE, max_media_bytes=MAX_MEDIA_BYTES)
    with serve_in_thread(create_app(cfg, backbone=backbone)) as url:
        yield Served(url, store, backbone)


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN_FILE", raising=False)


def _snd(backbone: VisionTransformer) -> AdapterCheckpoint:
    return make_checkpoint(backbone, "snd", features=FEATURES, seed=3)


def _other(backbone: VisionTransformer) -> AdapterCheckpoint:
    return make_checkpoint(backbone, "other", method="lora", features=FEATURES, seed=4)


def _saved(ckpt: AdapterCheckpoint, root: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix=ckpt.manifest.name, dir=root)) / "checkpoint"
    ckpt.save(path)
    return path


def _assert_matches(
    answer: ClassifyResponse, want: list[tuple[str, int, dict[str, float]]]
) -> None:
    assert [(r.adapter, r.version) for r in answer.results] == [(n, v) for n, v, _ in want]
    for result, (_, _, top) in zip(answer.results, want, strict=True):
        got = {item.label: item.score for item in result.labels}
        assert got.keys() == top.keys()
        assert got == pytest.approx(top, abs=2e-5)
        assert result.timeline is not None
        assert len(result.timeline) > 1


def _tree(store: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(store)), p.stat().st_size) for p in store.rglob("*"))


# -- reads ----------------------------------------------------------------------------------------
def test_info_names_the_servers_backbone(served: Served) -> None:
    want = f"{served.backbone.cfg.name}@{served.backbone.fingerprint()}"
    with Client(served.url) as client:
        info = client.info()
    assert info.backbone == want
    assert (info.backbone_name, info.backbone_fingerprint) == tuple(want.split("@"))

    async def run() -> str:
        async with AsyncClient(served.url) as client:
            return (await client.info()).backbone

    assert asyncio.run(run()) == want


def test_classify_answers_equal_the_library_reference(served: Served, tmp_path: Path) -> None:
    clip = encode(2.0, seed=5)
    path = tmp_path / "clip.wav"
    path.write_bytes(clip)
    bb = served.backbone
    snd = ("snd", 1, expected_top(reference_scores(bb, _snd(bb), clip), LABELS, 3))
    other = ("other", 1, expected_top(reference_scores(bb, _other(bb), clip), LABELS, 3))
    with Client(served.url) as client:
        _assert_matches(client.classify(path, "snd", top_k=3), [snd])
        _assert_matches(client.classify(clip, ["other@1", "snd"], top_k=3), [other, snd])
        with path.open("rb") as f:
            _assert_matches(client.classify(f, "snd,other", top_k=3), [snd, other])

    async def run() -> list[ClassifyResponse]:
        async with AsyncClient(served.url) as client:
            return list(
                await asyncio.gather(
                    client.classify(str(path), "snd", top_k=3),
                    client.classify(io.BytesIO(clip), ("other", "snd@1"), top_k=3),
                )
            )

    first, second = asyncio.run(run())
    _assert_matches(first, [snd])
    _assert_matches(second, [other, snd])


def test_av_event_answers_equal_the_library_reference(served: Served) -> None:
    video = clip_bytes()
    probs = reference_av(served.backbone, av_checkpoint(served.backbone, "scene", seed=0), video)
    want = [(AV_LABELS[int(row.argmax())], float(row.max())) for row in probs]

    async def run() -> list[tuple[str, float]]:
        async with AsyncClient(served.url) as client:
            answer = await client.av_event(video, "scene")
        return [(s.label, s.score) for s in answer.seconds]

    with Client(served.url) as client:
        answer = client.av_event(video, "scene@1")
    assert (answer.adapter, answer.version) == ("scene", 1)
    for got in ([(s.label, s.score) for s in answer.seconds], asyncio.run(run())):
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-5)
    assert all(e.label != "background" for e in answer.events)


def test_adapters_follows_every_page(served: Served) -> None:
    with Client(served.url) as client:
        paged = client.adapters(page_size=1)
        whole = client.adapters()
        snd = client.adapter("snd")
    names = [a.name for a in whole]
    assert names == sorted(names)
    assert {"other", "scene", "snd"} <= set(names)
    assert [a.model_dump() for a in paged] == [a.model_dump() for a in whole]
    assert (snd.name, snd.active, [v.version for v in snd.versions]) == ("snd", 1, [1])
    assert snd.versions[0].backbone == f"{served.backbone.cfg.name}@{served.backbone.fingerprint()}"
    assert snd.versions[0].labels == LABELS

    async def run() -> tuple[list[str], int | None]:
        async with AsyncClient(served.url) as client:
            listed = await client.adapters(page_size=2)
            return [a.name for a in listed], (await client.adapter("scene")).active

    assert asyncio.run(run()) == (names, 1)


# -- admin ----------------------------------------------------------------------------------------
def test_upload_activate_rollback_delete(served: Served, tmp_path: Path) -> None:
    bb, clip = served.backbone, encode(2.0, seed=6)
    v1 = make_checkpoint(bb, "fresh", features=FEATURES, seed=7)
    v2 = make_checkpoint(bb, "fresh", features=FEATURES, seed=8)
    top1 = expected_top(reference_scores(bb, v1, clip), LABELS, 5)
    top2 = expected_top(reference_scores(bb, v2, clip), LABELS, 5)
    with Client(served.url, token=ADMIN) as client:
        first = client.upload(_saved(v1, tmp_path))
        assert (first.name, first.version, first.created) == ("fresh", 1, True)
        again = client.upload(_saved(v1, tmp_path))
        assert (again.version, again.created) == (1, False)
        second = client.upload(_saved(v2, tmp_path), activate=True)
        assert (second.version, second.created, second.active) == (2, True, True)
        _assert_matches(client.classify(clip, "fresh"), [("fresh", 2, top2)])
        rolled = client.rollback("fresh")
        assert (rolled.active, rolled.previous) == (1, 2)
        _assert_matches(client.classify(clip, "fresh"), [("fresh", 1, top1)])
        assert client.activate("fresh", 2).active == 2
        with pytest.raises(Conflict) as conflict:
            client.delete("fresh", 2)
        assert "active" in conflict.value.detail
        assert client.delete("fresh", 2, force=True).model_dump() == {
            "name": "fresh",
            "deleted": [2],
            "active": 1,
        }
        assert client.delete("fresh").deleted == [1]
        with pytest.raises(NotFound, match="unknown adapter 'fresh'"):
            client.adapter("fresh")
    assert not (served.store / "fresh").exists()


def test_async_admin_calls(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token comes from the file $LOOKASIDE_ADMIN_TOKEN_FILE names when none is passed."""
    token_file = tmp_path / "token"
    token_file.write_text(f"{ADMIN}\n")
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN_FILE", str(token_file))
    bb = served.backbone
    dirs = [
        _saved(make_checkpoint(bb, "fresh-async", features=FEATURES, seed=s), tmp_path)
        for s in (9, 10)
    ]

    async def run() -> list[object]:
        async with AsyncClient(served.url) as client:
            up1 = await client.upload(dirs[0])
            up2 = await client.upload(dirs[1], activate=True)
            back = await client.rollback("fresh-async")
            gone = await client.delete("fresh-async", 2)
            state = await client.adapter("fresh-async")
            removed = await client.delete("fresh-async")
            return [up1.version, up2.active, back.active, gone.deleted, state.active, removed]

    up1, up2_active, back, gone, active, removed = asyncio.run(run())
    assert (up1, up2_active, back, gone, active) == (1, True, 1, [2], 1)
    assert removed.deleted == [1]  # type: ignore[attr-defined]


# -- errors ---------------------------------------------------------------------------------------
def test_errors_raise_their_class_with_the_servers_detail(served: Served, tmp_path: Path) -> None:
    ckpt_dir = _saved(make_checkpoint(served.backbone, "denied", features=FEATURES), tmp_path)
    clip = encode(1.0)
    with Client(served.url, token="wrong") as client:
        with pytest.raises(Unauthorized) as wrong:
            client.upload(ckpt_dir)
        assert (wrong.value.status_code, wrong.value.detail) == (403, "wrong admin token")
        with pytest.raises(NotFound) as unknown:
            client.classify(clip, "nope")
        assert unknown.value.status_code == 404
        assert "unknown adapter 'nope'" in unknown.value.detail
        assert unknown.value.error == "AdapterNotFound"
        with pytest.raises(PayloadTooLarge) as large:
            client.classify(b"\0" * (MAX_MEDIA_BYTES + 100_000), "snd")
        assert large.value.status_code == 413
        assert str(MAX_MEDIA_BYTES) in large.value.detail
        assert "LOOKASIDE_MAX_MEDIA_BYTES" in large.value.detail
    with Client(served.url) as client, pytest.raises(Unauthorized) as missing:
        client.activate("snd", 1)
    assert missing.value.status_code == 401
    assert "needs the admin token" in missing.value.detail
    assert not (served.store / "denied").exists()
    nowhere = f"http://127.0.0.1:{free_port()}"
    with Client(nowhere) as client, pytest.raises(ConnectionFailed, match=nowhere):
        client.info()

    async def run() -> None:
        async with AsyncClient(served.url, token="wrong") as client:
            with pytest.raises(Unauthorized, match="wrong admin token"):
                await client.delete("snd", 1)
            with pytest.raises(NotFound, match="unknown adapter 'nope'"):
                await client.av_event(b"x", "nope")
        async with AsyncClient(nowhere) as client:
            with pytest.raises(ConnectionFailed, match=nowhere):
                await client.adapters()

    asyncio.run(run())


# -- push -----------------------------------------------------------------------------------------
def test_push_refuses_another_backbone_before_uploading(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alien = make_checkpoint(tiny(), "alien", features=FEATURES)
    ref = alien.manifest.backbone
    ours = f"{served.backbone.cfg.name}@{served.backbone.fingerprint()}"
    path = _saved(alien, tmp_path)
    before = _tree(served.store)
    argv = ["push", str(path), "--url", served.url, "--token", ADMIN, "--activate"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"made for backbone {ref.name}@{ref.fingerprint}" in err
    assert f"runs {ours}" in err
    assert "nothing was uploaded" in err
    assert "--force" in err
    assert _tree(served.store) == before
    # --force skips the check: the upload is sent, and the server's own check refuses it (409)
    assert main([*argv, "--force"]) == 2
    err = capsys.readouterr().err
    assert "server refused the upload (409)" in err
    assert ref.fingerprint in err
    assert _tree(served.store) == before


def test_push_uploads_a_checkpoint_for_the_servers_backbone(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _saved(make_checkpoint(served.backbone, "pushed", features=FEATURES, seed=11), tmp_path)
    for extra in ([], ["--force"]):
        argv = ["push", str(path), "--url", served.url, "--token", ADMIN, "--activate", *extra]
        capsys.readouterr()
        assert main(argv) == 0
        assert "the server now serves pushed@1" in capsys.readouterr().out
    assert (served.store / "pushed" / "1").is_dir()
    with Client(served.url, token=ADMIN) as client:
        assert client.delete("pushed").deleted == [1]
