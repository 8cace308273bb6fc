"""``GET /healthz`` (liveness), ``GET /readyz`` (ready to serve, or why not), ``GET /info`` (what
this server runs) and ``GET /metrics`` (Prometheus exposition of this app's registry).

An orchestrator routes traffic by ``/readyz`` and restarts by ``/healthz`` (``docs/probes.md``):
readiness fails while the engine is stalled (a forward, bank command or adapter load has run
longer than ``engine_stall_s``), liveness only once it has been stuck for ``engine_dead_s``, so a
slow moment takes a replica out of rotation and a wedged one is restarted.
"""

from __future__ import annotations

import asyncio

import torch
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from lookaside import __version__
from service.deps import AppState, StateDep
from service.errors import NotReady
from service.metrics import CONTENT_TYPE
from service.schemas import ErrorBody, Health, Readiness
from service.schemas.health import ServerInfo

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "the engine has been stalled longer than `engine_dead_s`, or its "
            "worker died: restart the process",
        }
    },
)
async def healthz(state: StateDep) -> Response:
    """The process is alive (also while loading or draining); 503 once the engine has been
    stuck in one forward, bank command or adapter load for longer than ``engine_dead_s``, or its
    worker thread has died outside a shutdown: only a restart cures either."""
    engine = state.engine
    if engine is not None and not state.shutting_down and not engine.alive:
        return JSONResponse(Health(status="engine worker stopped").model_dump(), status_code=503)
    if engine is not None and engine.health().dead:
        return JSONResponse(Health(status="engine stalled").model_dump(), status_code=503)
    return JSONResponse(Health(status="ok").model_dump())


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: `reason` says why"}},
)
async def readyz(state: StateDep) -> Response:
    """Backbone and active adapters loaded, warm-up done and the engine not stalled; 503 with the
    reason otherwise."""
    engine = state.engine
    resident = len(engine.resident()) if engine is not None else 0
    health = engine.health() if engine is not None else None
    if state.shutting_down:
        body = Readiness(ready=False, reason="shutting down", adapters=resident)
    elif not state.ready:
        body = Readiness(ready=False, reason=state.reason, adapters=resident)
    elif engine is not None and not engine.alive:
        body = Readiness(ready=False, reason="the engine worker stopped", adapters=resident)
    elif health is not None and health.stalled:
        body = Readiness(ready=False, reason=health.reason, adapters=resident)
    else:
        return JSONResponse(Readiness(ready=True, adapters=resident).model_dump())
    return JSONResponse(
        body.model_dump(),
        status_code=503,
        headers={"Retry-After": str(state.settings.retry_after_s)},
    )


@router.get(
    "/info",
    summary="What this server runs",
    response_model=ServerInfo,
    responses={503: {"model": ErrorBody, "description": "the backbone is not loaded yet"}},
)
async def info(state: StateDep) -> ServerInfo:
    """The package version, the backbone (``name@fingerprint``: what an adapter's manifest must
    match), device, compute dtype and engine; 503 until the backbone is loaded. No token needed."""
    described = await asyncio.to_thread(server_info, state)  # a first fingerprint hashes weights
    if described is None:
        raise NotReady(f"the backbone is not loaded yet ({state.reason}); retry shortly")
    return described


def server_info(state: AppState) -> ServerInfo | None:
    """What :func:`info` answers, or None before the backbone is loaded."""
    backbone = state.backbone
    if backbone is None:
        return None
    settings = state.settings
    onnx = settings.engine == "onnxruntime"
    return ServerInfo(
        version=__version__,
        backbone=f"{backbone.cfg.name}@{backbone.fingerprint()}",
        device=_device(state),
        dtype=settings.ort_precision if onnx else settings.dtype,
        engine=settings.engine,
    )


def _device(state: AppState) -> str:
    """The engine's device (``cuda`` with its index); on Ray, where the ingress runs no forward,
    the replicas' ``device`` setting."""
    device = getattr(state.engine, "device", None)
    if not isinstance(device, torch.device):
        return state.settings.device
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"example": "lookaside_queue_depth 0.0\n"}}}},
)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics of this server."""
    if state.engine is not None:
        engine = state.engine
        state.metrics.safe(lambda: state.metrics.queue_depth.set(engine.queue_depth))
        state.metrics.safe(lambda: state.metrics.adapters_resident.set(len(engine.resident())))
    if state.store is not None:
        store = state.store
        state.metrics.safe(lambda: state.metrics.adapters_in_store.set(store.name_count()))
    # Rendering takes milliseconds whatever the store's size: off the event loop, and at most
    # once a second however fast a client scrapes, so a scraper never stalls other requests.
    body = await asyncio.to_thread(_scrape, state)
    return Response(body, media_type=CONTENT_TYPE)


def _scrape(state: AppState) -> bytes:
    """The exposition text, with ``lookaside_build_info`` set at the first scrape after the
    backbone is loaded (here, not in the lifespan, so a Ray ingress's app gets it too)."""
    if not state.metrics.build_info_set:
        state.metrics.safe(lambda: _set_build_info(state))
    return state.metrics.render_cached(state.settings.metrics_max_age_s)


def _set_build_info(state: AppState) -> None:
    described = server_info(state)
    if described is None:
        return
    name, _, fingerprint = described.backbone.rpartition("@")
    state.metrics.set_build_info(
        version=described.version,
        backbone=name,
        fingerprint=fingerprint,
        device=described.device,
        dtype=described.dtype,
        engine=described.engine,
    )
