"""HTTP routes, one module per resource, wired here."""

from __future__ import annotations

from fastapi import FastAPI

from service.routes import adapters, av_event, classify, health, stream, web


def install_routes(app: FastAPI) -> None:
    """Every route of the service: health, classify, av-event, the live stream (WebSocket),
    adapters (management) and the web page with its static files."""
    app.include_router(health.router)
    app.include_router(classify.router)
    app.include_router(av_event.router)
    app.include_router(stream.router)
    app.include_router(adapters.router)
    app.include_router(web.router)
    web.mount_static(app)
