"""The adapter management routes through real HTTP (in-process ASGI, lifespan run): every route,
every error, the bad-upload table (each 4xx with a message, the store and the served results
unchanged), hot swap and rollback seen by /classify, and a restart on the same store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lookaside.backbone import VisionTransformer
from lookaside.backbones import build_random
from tests.integration.service.svc_support import (
    ADMIN,
    checkpoint_bytes,
    encode,
    make_checkpoint,
    put_in_store,
    serve,
    settings,
)
from tests.unit.service.test_store_index import write_layout

Check = Callable[[httpx.AsyncClient], Awaitable[None]]
AUTH = {"Authorization": f"Bearer {ADMIN}"}
LIMIT = 200_000
"""max_upload_bytes of these tests (a tiny adapter is ~20 kB)."""


@pytest.fixture(scope="module")
def uploads(svc_backbone: VisionTransformer) -> dict[str, tuple[bytes, bytes]]:
    """Three different esc50 uploads and one of another adapter."""
    out = {}
    for key, name, seed in (("v1", "esc50", 1), ("v2", "esc50", 2), ("v3", "esc50", 3)):
        out[key] = checkpoint_bytes(make_checkpoint(svc_backbone, name, seed=seed))
    out["speech"] = checkpoint_bytes(make_checkpoint(svc_backbone, "speech", seed=4))
    return out


def _run(tmp_path: Path, backbone: VisionTransformer, check: Check, **overrides: Any) -> None:
    overrides.setdefault("max_upload_bytes", LIMIT)
    overrides.setdefault("warmup", False)

    async def main() -> None:
        async with serve(settings(tmp_path / "store", **overrides), backbone) as (_, client):
            await check(client)

    asyncio.run(main())


def _files(manifest: bytes, weights: bytes) -> dict[str, tuple[str, bytes]]:
    return {"manifest": ("manifest.json", manifest), "weights": ("adapter.safetensors", weights)}


async def _upload(
    client: httpx.AsyncClient, data: tuple[bytes, bytes], *, activate: bool = False
) -> httpx.Response:
    params = {"activate": "true"} if activate else {}
    return await client.post("/adapters", files=_files(*data), headers=AUTH, params=params)


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


def _edit(manifest: bytes, **changes: Any) -> bytes:
    data = json.loads(manifest)
    data.update(changes)
    return json.dumps(data).encode()


def _with_weights(manifest: bytes, weights: bytes) -> tuple[bytes, bytes]:
    """``weights`` with the manifest's sha256 made to match (so the tensor checks refuse it)."""
    return _edit(manifest, weights_sha256=hashlib.sha256(weights).hexdigest()), weights


def _retensored(manifest: bytes, weights: bytes, key: str, value: torch.Tensor | None) -> bytes:
    tensors = dict(load_tensors(weights))
    if value is None:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
    else:
        tensors[key] = value
    return save_tensors(tensors, metadata={"format": "pt"})


async def _clip_result(client: httpx.AsyncClient, adapter: str) -> dict[str, Any]:
    r = await client.post(
        "/classify", files={"file": ("clip.wav", encode(1.3))}, data={"adapter": adapter}
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["results"][0]
    return result


# -- the happy path, route by route ------------------------------------------------------------


def test_upload_list_inspect_activate_rollback_and_delete(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        r = await _upload(client, uploads["v1"])
        assert (r.status_code, r.json()) == (
            201,
            {"name": "esc50", "version": 1, "created": True, "active": True},
        )
        r = await _upload(client, uploads["v1"])  # identical content: the existing version
        assert (r.status_code, r.json()["version"], r.json()["created"]) == (200, 1, False)
        r = await _upload(client, uploads["v2"])
        assert (r.status_code, r.json()["version"], r.json()["active"]) == (201, 2, False)
        first = await _clip_result(client, "esc50")
        assert first["version"] == 1

        r = await _upload(client, uploads["v3"], activate=True)
        assert (r.status_code, r.json()["version"], r.json()["active"]) == (201, 3, True)
        assert (await _clip_result(client, "esc50"))["version"] == 3
        await _upload(client, uploads["speech"])

        r = await client.get("/adapters")
        assert r.status_code == 200
        listed = {a["name"]: a for a in r.json()["adapters"]}
        assert sorted(listed) == ["esc50", "speech"]
        assert listed["esc50"]["versions"] == [1, 2, 3]
        assert listed["esc50"]["active"] == 3
        assert listed["esc50"]["state"] == "ready"
        assert 3 in listed["esc50"]["resident"]
        assert listed["esc50"]["method"] == "bottleneck"

        r = await client.get("/adapters/esc50")
        assert r.status_code == 200
        info = r.json()
        assert (info["name"], info["active"], info["state"]) == ("esc50", 3, "ready")
        v3 = next(v for v in info["versions"] if v["version"] == 3)
        assert v3["active"]
        assert v3["resident"]
        assert v3["requests"] == 1
        assert v3["in_flight"] == 0
        assert v3["labels"] == ["dog", "rain", "siren", "bird", "engine"]
        assert (v3["task"], v3["method"], v3["task_type"]) == ("test", "bottleneck", "multiclass")
        assert 0 < v3["trainable_percent"] < 100
        assert v3["backbone"] == f"{svc_backbone.cfg.name}@{svc_backbone.fingerprint()}"
        assert info["requests"] == 2  # one on v1, one on v3

        r = await client.post("/adapters/esc50/activate", json={"version": 1}, headers=AUTH)
        assert (r.status_code, r.json()) == (200, {"name": "esc50", "active": 1, "previous": 3})
        rolled_back = await _clip_result(client, "esc50")
        assert rolled_back["version"] == 1
        assert rolled_back["labels"] == first["labels"]  # the same weights answer the same
        explicit = await _clip_result(client, "esc50@3")
        assert explicit["version"] == 3

        r = await client.delete("/adapters/esc50/versions/1", headers=AUTH)
        assert r.status_code == 409
        assert "force=true" in r.json()["detail"]
        r = await client.delete("/adapters/esc50/versions/2", headers=AUTH)
        assert (r.status_code, r.json()) == (200, {"name": "esc50", "deleted": [2], "active": 1})
        r = await client.delete("/adapters/esc50/versions/1", headers=AUTH, params={"force": True})
        assert (r.status_code, r.json()["active"]) == (200, 3)
        assert (await _clip_result(client, "esc50"))["version"] == 3
        r = await client.delete("/adapters/esc50", headers=AUTH)
        assert (r.status_code, r.json()) == (200, {"name": "esc50", "deleted": [3], "active": None})
        r = await client.get("/adapters/esc50")
        assert r.status_code == 404
        assert "adapters in the store: speech" in r.json()["detail"]
        r = await client.post(
            "/classify", files={"file": ("clip.wav", encode(1.0))}, data={"adapter": "esc50"}
        )
        assert r.status_code == 404

    _run(tmp_path, svc_backbone, check)


def test_lookup_errors_say_what_exists(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        await _upload(client, uploads["v1"])
        await _upload(client, uploads["v2"])
        cases: list[tuple[Callable[[], Awaitable[httpx.Response]], int, str]] = [
            (lambda: client.get("/adapters/nope"), 404, "adapters in the store: esc50"),
            (lambda: client.get("/adapters/ESC50"), 404, "lower-case"),
            (lambda: client.get("/adapters/..%2F..%2Fetc"), 404, "Not Found"),  # no route
            (lambda: client.get("/adapters/..%5Cetc"), 404, "lower-case"),
            (lambda: client.get("/adapters/%2E%2E"), 404, "lower-case"),
            (
                lambda: client.post("/adapters/esc50/activate", json={"version": 7}, headers=AUTH),
                404,
                r"versions of 'esc50': 1, 2 (active: 1)",
            ),
            (
                lambda: client.post(
                    "/adapters/esc50/activate", json={"version": "x"}, headers=AUTH
                ),
                422,
                "version",
            ),
            (
                lambda: client.post("/adapters/esc50/activate", json={}, headers=AUTH),
                422,
                "version",
            ),
            (
                lambda: client.delete("/adapters/esc50/versions/9", headers=AUTH),
                404,
                "1, 2 (active: 1)",
            ),
            (lambda: client.delete("/adapters/nope", headers=AUTH), 404, "esc50"),
            (
                lambda: client.post("/adapters", content=b"{}", headers=AUTH),
                415,
                "multipart/form-data",
            ),
            (
                lambda: client.post(
                    "/adapters", files={"manifest": ("m.json", b"{}")}, headers=AUTH
                ),
                422,
                "no `weights` part",
            ),
        ]
        for request, status, fragment in cases:
            r = await request()
            assert r.status_code == status, r.text
            assert fragment in r.json()["detail"], r.text

    _run(tmp_path, svc_backbone, check)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/adapters"),
        ("POST", "/adapters/esc50/activate"),
        ("DELETE", "/adapters/esc50/versions/1"),
        ("DELETE", "/adapters/esc50"),
    ],
)
def test_every_mutating_route_needs_the_admin_token(
    method: str,
    path: str,
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    uploads: dict[str, tuple[bytes, bytes]],
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        await _upload(client, uploads["v1"])
        before = _tree(tmp_path / "store")
        kwargs: dict[str, Any] = {}
        if path == "/adapters":
            kwargs["files"] = _files(*uploads["v2"])
        elif path.endswith("activate"):
            kwargs["json"] = {"version": 1}
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 403),
            ({"Authorization": ADMIN}, 401),  # no scheme
            ({"Authorization": "Basic " + ADMIN}, 401),
        ):
            r = await client.request(method, path, headers=headers, **kwargs)
            assert r.status_code == status, r.text
            assert r.json()["detail"]
        assert _tree(tmp_path / "store") == before
        # The reads stay open.
        assert (await client.get("/adapters")).status_code == 200
        assert (await client.get("/adapters/esc50")).status_code == 200

    _run(tmp_path, svc_backbone, check)


# -- the bad-upload table -------------------------------------------------------------------


def _bad_uploads(manifest: bytes, weights: bytes) -> dict[str, tuple[dict[str, Any], int, str]]:
    """case -> (request kwargs, status, fragment of the message)."""
    other = build_random("test_deit", seed=2)
    first = sorted(load_tensors(weights))[0]

    def post(m: bytes, w: bytes, headers: dict[str, str] = AUTH) -> dict[str, Any]:
        return {"files": _files(m, w), "headers": headers}

    return {
        "corrupt bytes": (post(manifest, b"\x13\x37" * 400), 422, "sha256"),
        "pickle posing as weights": (
            post(*_with_weights(manifest, pickle.dumps({"head.fc.weight": [0.0] * 8}))),
            422,
            "safetensors",
        ),
        "nan weights": (
            post(*_with_weights(manifest, _retensored(manifest, weights, first, None))),
            422,
            "NaN or Inf",
        ),
        "wrong shape": (
            post(
                *_with_weights(
                    manifest, _retensored(manifest, weights, "head.fc.weight", torch.zeros(9, 64))
                )
            ),
            422,
            "head.fc.weight",
        ),
        "other backbone": (
            post(
                _edit(
                    manifest,
                    backbone={
                        **json.loads(manifest)["backbone"],
                        "fingerprint": other.fingerprint(),
                    },
                ),
                weights,
            ),
            409,
            "made for backbone",
        ),
        "path traversal name": (
            post(_edit(manifest, name="../../etc"), weights),
            422,
            "lower-case",
        ),
        "upper-case name": (post(_edit(manifest, name="ESC50"), weights), 422, "lower-case"),
        "manifest not json": (post(b"{oops", weights), 422, "JSON"),
        "zero-length weights": (post(manifest, b""), 422, "empty"),
        "missing token": (post(manifest, weights, {}), 401, "Bearer"),
        "wrong token": (post(manifest, weights, {"Authorization": "Bearer nope"}), 403, "wrong"),
        "too large": (post(manifest, b"\0" * (LIMIT + 1)), 413, "limit"),
    }


BAD = [
    "corrupt bytes",
    "pickle posing as weights",
    "nan weights",
    "wrong shape",
    "other backbone",
    "path traversal name",
    "upper-case name",
    "manifest not json",
    "zero-length weights",
    "missing token",
    "wrong token",
    "too large",
]


def test_bad_upload_table_is_complete(uploads: dict[str, tuple[bytes, bytes]]) -> None:
    assert sorted(_bad_uploads(*uploads["v2"])) == sorted(BAD)


@pytest.mark.parametrize("case", BAD)
def test_a_bad_upload_is_refused_and_changes_nothing(
    case: str,
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    uploads: dict[str, tuple[bytes, bytes]],
) -> None:
    request, status, fragment = _bad_uploads(*uploads["v2"])[case]
    root = tmp_path / "store"

    async def check(client: httpx.AsyncClient) -> None:
        await _upload(client, uploads["v1"])
        served = await _clip_result(client, "esc50")
        listing = (await client.get("/adapters/esc50")).json()
        before = _tree(root)
        r = await client.post("/adapters", params={"activate": "true"}, **request)
        assert r.status_code == status, r.text
        assert fragment in r.json()["detail"], r.text
        assert _tree(root) == before
        assert not (tmp_path / "etc").exists()
        after = await _clip_result(client, "esc50")
        assert (after["version"], after["labels"]) == (served["version"], served["labels"])
        now = (await client.get("/adapters/esc50")).json()
        assert [v["version"] for v in now["versions"]] == [
            v["version"] for v in listing["versions"]
        ]

    _run(tmp_path, svc_backbone, check)


# -- restart ----------------------------------------------------------------------------------


def test_a_new_server_on_the_same_store_serves_what_was_acknowledged(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    seen: dict[str, Any] = {}

    async def first(client: httpx.AsyncClient) -> None:
        for key in ("v1", "v2", "v3", "speech"):
            assert (await _upload(client, uploads[key])).status_code == 201
        await client.post("/adapters/esc50/activate", json={"version": 2}, headers=AUTH)
        await client.delete("/adapters/esc50/versions/1", headers=AUTH)
        seen["listing"] = (await client.get("/adapters")).json()
        seen["esc50"] = await _clip_result(client, "esc50")

    async def second(client: httpx.AsyncClient) -> None:
        listing = (await client.get("/adapters")).json()
        assert [(a["name"], a["versions"], a["active"]) for a in listing["adapters"]] == [
            (a["name"], a["versions"], a["active"]) for a in seen["listing"]["adapters"]
        ]
        again = await _clip_result(client, "esc50")
        assert (again["version"], again["labels"]) == (2, seen["esc50"]["labels"])
        r = await _upload(client, uploads["v1"])  # version numbers are not reused
        assert (r.status_code, r.json()["version"]) == (201, 4)

    _run(tmp_path, svc_backbone, first)
    _run(tmp_path, svc_backbone, second)


def test_residency_shows_loads_and_evictions(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        await _upload(client, uploads["v1"])
        await _upload(client, uploads["speech"])
        for ref in ("esc50", "speech", "esc50"):
            await _clip_result(client, ref)
        esc50 = (await client.get("/adapters/esc50")).json()["versions"][0]
        speech = (await client.get("/adapters/speech")).json()["versions"][0]
        assert (esc50["state"], esc50["resident"], esc50["loads"]) == ("ready", True, 2)
        assert esc50["evictions"] == 1
        assert (speech["state"], speech["resident"], speech["evictions"]) == ("unloaded", False, 1)
        metrics = (await client.get("/metrics")).text
        assert 'lookaside_adapter_evictions_total{adapter="esc50"} 1.0' in metrics
        assert 'lookaside_adapter_evictions_total{adapter="speech"} 1.0' in metrics

    _run(tmp_path, svc_backbone, check, max_resident_adapters=1)


# -- scale: pages, bounded 404s; startup repair; auth before the body ---------------------------


def _store_with_names(root: Path, upload: tuple[bytes, bytes], names: list[str]) -> None:
    """``names`` (one version each) written straight into the store's layout."""
    for name in names:
        write_layout(root, upload, name, 1)
    (root / ".weights").unlink()


def test_pages_of_adapters_walk_every_name_once(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    names = [f"a{i:02d}" for i in range(12)]
    _store_with_names(tmp_path / "store", uploads["v1"], names)

    async def check(client: httpx.AsyncClient) -> None:
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 5}
        sizes = []
        while True:
            r = await client.get("/adapters", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["total"] == 12
            sizes.append(len(body["adapters"]))
            seen += [a["name"] for a in body["adapters"]]
            if body["next_cursor"] is None:
                break
            params = {"limit": 5, "cursor": body["next_cursor"]}
        assert sizes == [5, 5, 2]
        assert seen == names
        everything = (await client.get("/adapters")).json()  # default page holds them all
        assert ([a["name"] for a in everything["adapters"]], everything["next_cursor"]) == (
            names,
            None,
        )
        assert everything["adapters"][0]["versions"] == [1]
        for bad in ({"limit": 0}, {"limit": 1001}, {"cursor": "bm90LWEtY3Vyc29y"}, {"cursor": "%"}):
            r = await client.get("/adapters", params=bad)
            assert r.status_code == 422, (bad, r.text)
            assert isinstance(r.json()["detail"], str)

    _run(tmp_path, svc_backbone, check)


def test_an_unknown_adapter_gets_a_few_close_matches_not_the_whole_store(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    _store_with_names(
        tmp_path / "store", uploads["v1"], ["esc50", *(f"adapter-{i:02d}" for i in range(39))]
    )

    async def check(client: httpx.AsyncClient) -> None:
        for request in (
            lambda: client.get("/adapters/esc5"),
            lambda: client.post(
                "/classify", files={"file": ("c.wav", encode(1.0))}, data={"adapter": "esc5"}
            ),
        ):
            r = await request()
            assert r.status_code == 404, r.text
            detail = r.json()["detail"]
            assert "40 adapters in the store, similar names: esc50" in detail
            assert detail.count("adapter-") <= 5
            assert len(detail) < 400, detail

    _run(tmp_path, svc_backbone, check)


def test_a_store_left_without_an_active_version_is_repaired_at_startup(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    """The state a crash between a first version's rename and its ACTIVE write leaves."""
    root = tmp_path / "store"
    for seed, version in ((1, 1), (2, 2)):
        ckpt = make_checkpoint(svc_backbone, "esc50", seed=seed, version=version)
        put_in_store(root, ckpt, activate=False)
    assert not (root / "esc50" / "ACTIVE").exists()

    async def check(client: httpx.AsyncClient) -> None:
        r = await client.get("/adapters/esc50")
        assert (r.status_code, r.json()["active"]) == (200, 2)
        assert (await _clip_result(client, "esc50"))["version"] == 2

    _run(tmp_path, svc_backbone, check)
    assert (root / "esc50" / "ACTIVE").read_text().strip() == "2"


def test_retrying_an_identical_upload_with_activate_makes_it_live(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        await _upload(client, uploads["v1"])
        r = await _upload(client, uploads["v2"])
        assert (r.status_code, r.json()["active"]) == (201, False)
        r = await _upload(client, uploads["v2"], activate=True)
        assert (r.status_code, r.json()) == (
            200,
            {"name": "esc50", "version": 2, "created": False, "active": True},
        )
        assert (await _clip_result(client, "esc50"))["version"] == 2

    _run(tmp_path, svc_backbone, check)


_UNREAD: dict[str, tuple[str, str, dict[str, Any]]] = {
    "activate, malformed JSON": ("POST", "/adapters/esc50/activate", {"content": b"{not json"}),
    "activate, not an object": ("POST", "/adapters/esc50/activate", {"json": [1, 2]}),
    "activate, no body": ("POST", "/adapters/esc50/activate", {}),
    "activate, huge body": ("POST", "/adapters/esc50/activate", {"content": b" " * 100_000}),
    "upload, not multipart": ("POST", "/adapters", {"content": b"{}"}),
    "upload, bad query": ("POST", "/adapters", {"params": {"activate": "maybe"}}),
    "delete version, not a number": ("DELETE", "/adapters/esc50/versions/x", {}),
    "delete version, bad query": (
        "DELETE",
        "/adapters/esc50/versions/1",
        {"params": {"force": "maybe"}},
    ),
}


@pytest.mark.parametrize("case", sorted(_UNREAD))
def test_admin_routes_refuse_a_missing_token_before_reading_the_request(
    case: str,
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    uploads: dict[str, tuple[bytes, bytes]],
) -> None:
    method, path, kwargs = _UNREAD[case]

    async def check(client: httpx.AsyncClient) -> None:
        await _upload(client, uploads["v1"])
        before = _tree(tmp_path / "store")
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 403)):
            r = await client.request(method, path, headers=headers, **kwargs)
            assert r.status_code == status, r.text
            assert isinstance(r.json()["detail"], str)
        assert _tree(tmp_path / "store") == before

    _run(tmp_path, svc_backbone, check)


def test_the_activate_body_is_bounded_and_validated_after_the_token(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        await _upload(client, uploads["v1"])
        await _upload(client, uploads["v2"])
        url = "/adapters/esc50/activate"
        for kwargs, status, fragment in (
            ({"content": b"{not json"}, 422, "not valid JSON"),
            ({"content": b"[" * 3000 + b"]" * 3000}, 413, "limit of 4096 bytes"),
            ({"content": b"[" * 2000 + b"]" * 2000}, 422, "body"),
            ({"json": [1]}, 422, "body"),
            ({"json": {"version": 2, "extra": 1}}, 422, "body.extra"),
            ({"json": {"version": 0}}, 422, "body.version"),
        ):
            r = await client.post(url, headers=AUTH, **kwargs)
            assert r.status_code == status, (kwargs, r.text)
            assert isinstance(r.json()["detail"], str)
            assert fragment in r.json()["detail"], r.text
        # curl -d without a Content-Type header still works.
        r = await client.post(url, headers=AUTH, content=b'{"version": 2}')
        assert (r.status_code, r.json()) == (200, {"name": "esc50", "active": 2, "previous": 1})
        schema = (await client.get("/openapi.json")).json()
        body = schema["paths"]["/adapters/{name}/activate"]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"]["required"] == ["version"]
        listing = schema["paths"]["/adapters"]["get"]
        assert {p["name"] for p in listing["parameters"]} == {"limit", "cursor"}

    _run(tmp_path, svc_backbone, check)
