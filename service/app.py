"""``create_app(settings)``: the FastAPI app, with everything built in its lifespan.

Nothing is built at import. Startup, in order (``GET /readyz`` answers 503 with the current step
until the end): load the backbone once (or take the injected one) -> start the engine worker ->
open the store (removing what a crash left) -> load adapters' active versions while the device
tier has room (through the registry; the tiers' byte budgets are logged first) -> one warm-up
batch per token grid in use -> ready.

Shutdown (uvicorn stops accepting connections, closes every WebSocket itself with 1001 -- our
protocol subclass, :mod:`service.stream.ws_protocol` -- so each ``/stream`` session ends and
cancels its queued windows, waits for the requests in flight, then runs the lifespan's exit): new
requests get 503 + Retry-After, any ``/stream`` session still live (another server, or one that
had not ended yet) is closed with 1001, then the engine drains its queue and answers every job it
accepted, and its worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lookaside import __version__
from lookaside.backbone import VisionTransformer
from lookaside.backbones import load_backbone
from lookaside.bank import AdapterBank
from lookaside.checkpoint import AdapterManifest, CheckpointLimits
from lookaside.errors import LookasideError
from lookaside.model import FeatureRunner
from lookaside.tasks import CLIP, get_task, task_for
from service import errors
from service.adapter_tiers import TierSetup, tier_setup
from service.deps import AppState
from service.engine import Engine
from service.errors import OverBudget, StartupFailed
from service.http_contract import AllowMethods, install_openapi
from service.http_limits import CLIENT_GONE_KEY, BodyLimits, InflightBytes
from service.logging import RequestIdMiddleware
from service.metrics import ServiceMetrics, route_label
from service.pipeline import ADAPTERS_KEY
from service.registry import AdapterRegistry
from service.registry.packing import BankPacking
from service.routes import install_routes
from service.routes.docs import install_docs
from service.routes.stream import live_sessions
from service.settings import ServiceSettings
from service.store import AdapterStore

log = logging.getLogger("service.app")

DESCRIPTION = """\
One frozen ViT backbone, many small audio adapters, served in mixed batches.

* `POST /classify`: a clip (multipart `file`, or the raw body with `?adapter=`) through one or
  more adapters (`adapter=esc50`, `esc50@2`, or `esc50,speech`); one result per adapter.
  For clips longer than an adapter's window, `timeline` scores each window and the clip-level
  `labels` are the mean of the window scores.
* Live streaming (WebSocket `GET /stream`): open with a JSON message naming the adapters
  (`{"adapters": ["speech"], "sample_rate": 16000, "format": "pcm16"}`), then send binary audio
  frames; the server answers one JSON message per window (start and end in the stream, top-k
  per adapter, the version that served it, the lag), cut at the hop and scored by the same
  engine and batches as `/classify`. Versions are pinned for the session unless `follow` is
  set. Limits close the socket with a code of their own, after an `error` message naming it
  (4400 bad message, hop or rate, 4404 unknown adapter, 4408 idle or slower than real time,
  4413 too long, 4415 audio-visual adapter, 4429 too many sessions, 4430 ahead of real time,
  4431 not reading, 4503 not ready, 1009 frame too big, 1011 server error); 1000 ends a
  session after `end`, 1001 at shutdown. Protocol and limits: docs/streaming.md.
* `GET /healthz`, `GET /readyz`, `GET /info` (version, backbone, device), `GET /metrics`
  (Prometheus).
* `/adapters`: upload, list, activate (rollback = activate an older version), delete;
  mutating routes need `Authorization: Bearer <admin token>` ("Authorize" on this page).
"""


STREAM_CLOSE_TIMEOUT_S = 5.0
"""Longest wait at shutdown for the live stream sessions to close (each close is bounded)."""

Starter = Callable[[AppState], Awaitable[None]]
"""Builds what serves (engine, store, registry) into the app's state during the lifespan."""


def create_app(
    settings: ServiceSettings,
    *,
    backbone: VisionTransformer | None = None,
    start: Starter | None = None,
) -> FastAPI:
    """The app; the backbone (``backbone`` or ``settings.backbone``) is loaded in the lifespan.

    ``start``: what the lifespan builds instead of this process's own engine and registry (the
    Ray ingress's remote ones, :mod:`service.ray.ingress`); the routes are the same either way.
    """
    metrics = ServiceMetrics(max_adapters=settings.metrics_max_adapters)
    state = AppState(
        settings=settings,
        metrics=metrics,
        featurize_pool=ThreadPoolExecutor(
            settings.featurize_threads, thread_name_prefix="lookaside-featurize"
        ),
        body_budget=InflightBytes(settings.max_inflight_body_bytes),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await (start(state) if start is not None else start_serving(state, backbone))
        except LookasideError as exc:  # ours: one line says why; a bug keeps its traceback
            log.error("cannot start: %s", exc)
            await _stop(state)
            raise StartupFailed(str(exc)) from None
        try:
            yield
        finally:
            await _stop(state)

    app = FastAPI(
        title="Lookaside",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the package by install_docs (FastAPI's use a CDN)
        redoc_url=None,
    )
    app.state.lookaside = state
    live_sessions(state)  # the session cap and the shutdown's close-all
    errors.install(app, retry_after_s=settings.retry_after_s)
    install_routes(app)
    install_docs(app)
    install_openapi(app)
    # Innermost first, so the body limits' 408/413/503 answers are counted by the metrics and
    # carry the request id.
    app.add_middleware(
        BodyLimits,
        budget=state.body_budget,
        body_timeout_s=settings.body_timeout_s,
        retry_after_s=settings.retry_after_s,
    )
    app.add_middleware(AllowMethods, openapi=app.openapi)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


def _runner_factory(
    settings: ServiceSettings,
) -> Callable[[VisionTransformer, AdapterBank], FeatureRunner] | None:
    """The ONNX Runtime feature runner when ``engine=onnxruntime`` (imported only then)."""
    if settings.engine != "onnxruntime":
        return None
    from lookaside.onnx.runner import OrtFeatures

    def build(backbone: VisionTransformer, bank: AdapterBank) -> FeatureRunner:
        return OrtFeatures(
            backbone,
            bank,
            cache_dir=settings.ort_cache,
            precision=settings.ort_precision,
            tensorrt=settings.ort_tensorrt,
        )

    return build


async def start_serving(state: AppState, backbone: VisionTransformer | None) -> None:
    """Load the backbone, start the engine, open the store, start the registry, warm up (the
    one-process server's lifespan, and each Ray model replica's constructor)."""
    settings = state.settings
    started = time.perf_counter()
    device = settings.torch_device()
    state.reason = "loading the backbone"
    if backbone is None:
        backbone = await asyncio.to_thread(load_backbone, settings.backbone, device=device)
    elif next(backbone.parameters()).device != device:
        backbone = backbone.to(device)
    backbone.requires_grad_(False).eval()
    state.backbone = backbone
    tiers = tier_setup(settings, device)
    engine = Engine(
        backbone,
        device=device,
        compute_dtype=settings.torch_dtype(),
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        queue_capacity=settings.queue_capacity,
        mixing=settings.mixing == "on",
        bank_capacity=settings.bank_capacity,
        metrics=state.metrics,
        max_batch_tokens=settings.max_batch_tokens,
        stall_s=settings.engine_stall_s,
        dead_s=settings.engine_dead_s,
        runner=_runner_factory(settings),
        device_budget_bytes=tiers.budgets.device,
    )
    engine.start()
    state.engine = engine
    stats = getattr(engine.model.runner, "stats", None)
    if stats is not None:
        state.metrics.watch_onnx(stats)

    state.reason = "opening the adapter store"
    store = await asyncio.to_thread(open_store, settings)
    state.store = store

    state.reason = "loading the active adapters"
    state.registry = await _start_registry(state, store, engine, backbone, tiers)

    if settings.warmup:
        state.reason = "warming up"
        await _warm_up(state, engine, backbone)
    state.ready = True
    state.reason = None
    log.info(
        "ready in %.1f s: backbone %s on %s (%s), %d adapters resident, %s",
        time.perf_counter() - started,
        settings.backbone if backbone.source == "random" else backbone.source,
        device,
        settings.dtype
        if settings.engine == "torch"
        else f"onnxruntime {settings.ort_precision}, graphs in {settings.ort_cache}",
        len(engine.resident()),
        f"mixing {settings.mixing}",
    )


async def _stop(state: AppState) -> None:
    state.shutting_down = True
    state.ready = False
    state.reason = "shutting down"
    # before the drain: a session's windows would otherwise keep feeding the engine
    await live_sessions(state).close_all(timeout=STREAM_CLOSE_TIMEOUT_S)
    if state.engine is not None:
        log.info("draining %d queued jobs", state.engine.queue_depth)
        # bounded: a wedged forward must not hold the process past its grace period
        timeout = _stop_timeout(state.settings)
        await asyncio.to_thread(state.engine.stop, drain=True, timeout=timeout)
        if state.engine.alive:
            log.error("the engine worker did not stop within %.0f s; exiting without it", timeout)
    if state.registry is not None:
        state.registry.close()
    state.featurize_pool.shutdown(wait=False, cancel_futures=True)
    log.info("stopped")


def _stop_timeout(settings: ServiceSettings) -> float:
    """How long shutdown waits for the engine to drain: every queued request has at most its
    timeout left, and one forward at most the stall budget."""
    return settings.request_timeout_s + settings.engine_stall_s


def open_store(settings: ServiceSettings) -> AdapterStore:
    """The store with the server's limits. On Ray (``settings.ray``) it is shared: writes are
    journalled for the other processes, and no startup repair runs here (another process may be
    writing; ``lookaside-serve --ray`` repairs it before deploying)."""
    limits = CheckpointLimits(
        max_weights_bytes=settings.max_upload_bytes,
        max_window_tokens=settings.max_batch_tokens,
    )
    store = AdapterStore(settings.store, limits=limits, shared=settings.ray)
    if settings.ray:
        return store
    removed = store.cleanup()
    if removed:
        log.warning("removed %d leftovers of an interrupted write: %s", len(removed), removed)
    return store


async def _start_registry(
    state: AppState,
    store: AdapterStore,
    engine: Engine,
    backbone: VisionTransformer,
    tiers: TierSetup,
) -> AdapterRegistry:
    """The registry (residency within the device budget, pins, the host tier, load on demand),
    with active versions preloaded while the device tier has room."""
    settings = state.settings
    registry = AdapterRegistry(
        store,
        engine,
        backbone=backbone,
        resident_limit=settings.max_resident_adapters,
        device_budget_bytes=tiers.budgets.device,
        policy=settings.device_cache_policy,
        host=tiers.host,
        packing=BankPacking(engine.bank),
        pinned=settings.pinned,
        events=state.metrics,
        loader_threads=settings.max_loading_adapters,
        max_pending_loads=settings.max_pending_loads,
    )
    state.metrics.watch_tiers(lambda: registry.tier_stats(engine.tier_stats().allocated))
    if settings.ray:  # a Ray model replica: the router decides what each replica holds
        return registry
    loaded = await registry.preload(settings.preload_adapters)
    log.info("preloaded %d adapter versions: %s", len(loaded), ", ".join(loaded) or "none")
    return registry


async def _warm_up(state: AppState, engine: Engine, backbone: VisionTransformer) -> None:
    """One batch per (task kind, token grid) in use, so the first request does not pay for lazy
    init; with no clip adapter resident, one bare-backbone clip batch of its own grid."""
    keys: dict[tuple[str, int, int], str | None] = {}
    for adapter_id in engine.resident():
        manifest = _manifest_of(state, adapter_id)
        if manifest is not None:
            keys.setdefault((task_for(manifest.method).name, *_grid(manifest)), adapter_id)
    if not any(kind == CLIP.name for kind, _, _ in keys):
        keys[(CLIP.name, backbone.cfg.num_frames, backbone.cfg.num_mel_bins)] = None
    for (kind, frames, mel), warm_id in list(keys.items()):
        task = get_task(kind)
        try:
            fut = engine.submit_task(
                task,
                task.warmup_inputs(backbone.cfg, frames, mel),
                warm_id,
                request_id="warm-up",
                timeout_s=600.0,
            )
        except OverBudget as exc:  # the bare backbone's own grid over LOOKASIDE_MAX_BATCH_TOKENS
            log.warning("not warming up the %s grid %dx%d: %s", kind, frames, mel, exc)
            del keys[(kind, frames, mel)]
            continue
        await asyncio.wrap_future(fut)
    log.info("warmed up %d token grid(s): %s", len(keys), sorted(keys))


def _grid(manifest: AdapterManifest) -> tuple[int, int]:
    return manifest.features.target_frames, manifest.features.num_mel_bins


def _manifest_of(state: AppState, adapter_id: str) -> AdapterManifest | None:
    name, _, version = adapter_id.partition("@")
    if state.store is None or not version.isdigit():
        return None
    try:
        return state.store.manifest(name, int(version))
    except LookasideError:  # deleted meanwhile: nothing to warm up for it
        return None


class _MetricsMiddleware:
    """Counts answers by adapter/route/status and times them (never fails a request)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if scope.get(CLIENT_GONE_KEY):
                status = 499  # never answered: the client left
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        path = route_label(scope)
        adapters = scope.get(ADAPTERS_KEY) or [""]

        def record() -> None:
            self.metrics.request_seconds.labels(route=path).observe(elapsed)
            for adapter in adapters:
                self.metrics.requests.labels(adapter=adapter, route=path, status=str(status)).inc()
                if adapter:
                    self.metrics.adapter_request_seconds.labels(adapter=adapter).observe(elapsed)

        self.metrics.safe(record)
