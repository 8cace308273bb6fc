"""HTTP routes, one module per resource, wired here (STYLE 9)."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from fastapi import FastAPI

from service.routes import av_event, classify, health

log = logging.getLogger("service.routes")


def _optional(module: str) -> ModuleType | None:
    """A route module built by another part of the project, or None while it is absent."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        log.warning("%s is absent: its routes are off", module)
        return None


def install_routes(app: FastAPI) -> None:
    """Every route of the service: health, classify, av-event, adapters (management) and the web
    page."""
    app.include_router(health.router)
    app.include_router(classify.router)
    app.include_router(av_event.router)
    adapters = _optional("service.routes.adapters")
    if adapters is not None:
        app.include_router(adapters.router)
    web = _optional("service.routes.web")
    if web is not None:
        app.include_router(web.router)
        web.mount_static(app)
