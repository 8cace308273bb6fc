"""``GET /info`` against a real app: what the server runs, the same fields whether this process
serves or a Ray ingress (its own lifespan start, no local engine) does; 503 before the backbone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

import lookaside
from lookaside.backbone import VisionTransformer
from service.app import create_app
from service.deps import AppState
from tests.integration.service.svc_support import serve, settings


def test_info_names_version_backbone_device_dtype_engine(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    async def run() -> httpx.Response:
        async with serve(settings(tmp_path / "store")) as (_, client):
            return await client.get("/info")  # no token: the app has one, /info needs none

    answer = asyncio.run(run())
    assert answer.status_code == 200
    # the server loaded "random:test_vit:1" itself: same weights as the session's backbone
    assert answer.json() == {
        "version": lookaside.__version__,
        "backbone": f"test_vit@{svc_backbone.fingerprint()}",
        "device": "cpu",
        "dtype": "fp32",
        "engine": "torch",
    }


def test_info_is_503_with_the_reason_until_the_backbone_is_loaded(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path / "store"))  # lifespan not run: nothing loaded yet

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/info")

    answer = asyncio.run(run())
    assert answer.status_code == 503
    assert answer.headers["retry-after"]
    assert answer.json()["detail"] == "the backbone is not loaded yet (starting); retry shortly"


def test_info_on_a_ray_style_ingress_reports_the_replicas_settings(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    """The Ray ingress builds the app with its own start: a CPU backbone and no local engine; the
    replicas' device and ONNX precision come from the settings they share."""

    async def start(state: AppState) -> None:
        state.backbone = svc_backbone
        state.ready = True
        state.reason = None

    cfg = settings(tmp_path / "store", device="auto", engine="onnxruntime", ort_precision="int8")
    app = create_app(cfg, start=start)

    async def run() -> httpx.Response:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.get("/info")

    body = asyncio.run(run()).json()
    assert body["device"] == "auto"
    assert (body["dtype"], body["engine"]) == ("int8", "onnxruntime")
    assert body["backbone"] == f"{svc_backbone.cfg.name}@{svc_backbone.fingerprint()}"
