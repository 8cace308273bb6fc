"""The ingress deployment: the one-process FastAPI app, started with remote engine and registry.

``__serve_build_asgi_app__`` builds the app in the replica (nothing of it is pickled), from
:func:`service.app.create_app` with :meth:`Ingress.start` as its lifespan's start: so the routes,
the HTTP limits in the app (body deadline, in-flight body bytes), the errors and the OpenAPI are
the same code as one process. What differs: the backbone is loaded on the CPU only to validate
uploads and shape features (no forward runs here), the store is shared, and the engine and
registry are :mod:`service.ray.remote`'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from ray import serve

from lookaside.backbones import load_backbone
from service import logging as service_logging
from service.app import create_app, open_store
from service.deps import AppState
from service.ray.export import EXPORT_S, RayExport
from service.ray.metrics import ReplicaMetrics
from service.ray.remote import RemoteEngine, RemoteRegistry
from service.ray.wire import ingress_settings

log = logging.getLogger("service.ray.ingress")


@serve.ingress()
class Ingress:
    """A Ray Serve deployment class (bound in :mod:`service.ray.app` with the model's handle)."""

    def __init__(self, payload: dict[str, Any], model: Any, admin_token: str | None = None) -> None:
        self.settings = ingress_settings(payload, admin_token)
        service_logging.configure(self.settings.log_format, self.settings.log_level)
        self.model = model

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.settings, start=self.start)

    async def start(self, state: AppState) -> None:
        """The lifespan's start: backbone (CPU), shared store, remote engine and registry."""
        settings = state.settings
        state.reason = "loading the backbone"
        backbone = await asyncio.to_thread(load_backbone, settings.backbone, device="cpu")
        backbone.requires_grad_(False).eval()
        state.backbone = backbone
        state.reason = "opening the adapter store"
        store = await asyncio.to_thread(open_store, settings)
        state.store = store
        engine = RemoteEngine(
            self.model, backbone, settings, ReplicaMetrics(state.metrics.registry)
        )
        state.engine = engine
        state.registry = RemoteRegistry(store, engine, backbone=backbone, settings=settings)
        # this ingress's request metrics, also on Ray's export (a scrape of /metrics through the
        # proxy reaches one ingress replica only)
        self._export = asyncio.get_running_loop().create_task(
            RayExport(state.metrics.registry, interval_s=EXPORT_S).run(lambda: state.shutting_down)
        )
        state.ready = True
        state.reason = None
        log.info(
            "ingress ready: backbone %s, store %s (%d adapters), model deployment %s",
            backbone.source,
            settings.store,
            store.name_count(),
            getattr(self.model, "deployment_name", "?"),
        )
