"""``GET /healthz`` (the process is alive), ``GET /readyz`` (ready to serve, or why not) and
``GET /metrics`` (Prometheus exposition of this app's registry)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.deps import StateDep
from service.metrics import CONTENT_TYPE
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (also while loading or draining)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: `reason` says why"}},
)
async def readyz(state: StateDep) -> Response:
    """Backbone and active adapters loaded and warm-up done; 503 with the reason before."""
    resident = len(state.engine.resident()) if state.engine is not None else 0
    if state.shutting_down:
        body = Readiness(ready=False, reason="shutting down", adapters=resident)
    elif not state.ready:
        body = Readiness(ready=False, reason=state.reason, adapters=resident)
    elif state.engine is not None and not state.engine.alive:
        body = Readiness(ready=False, reason="the engine worker stopped", adapters=resident)
    else:
        return JSONResponse(Readiness(ready=True, adapters=resident).model_dump())
    return JSONResponse(
        body.model_dump(),
        status_code=503,
        headers={"Retry-After": str(state.settings.retry_after_s)},
    )


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
        state.metrics.safe(lambda: state.metrics.adapters_in_store.set(len(store.names())))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
