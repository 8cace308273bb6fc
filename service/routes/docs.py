"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served with their scripts and styles from the
installed ``fastapi-offline`` package, so the pages work with no network (FastAPI's own pages load
them from a CDN and stay blank offline).

The admin routes carry the bearer scheme of :mod:`service.deps` in the OpenAPI document, so
Swagger UI's "Authorize" takes the admin token and "Try it out" sends it.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
"""``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``, ``favicon.png``."""
ASSETS_URL = "/docs/assets"
TITLE = "Lookaside API"
POLICY = "img-src 'self' data:; font-src 'self' data:; connect-src 'self'"
"""Content-Security-Policy of the two pages: images, fonts and fetches only from this server.
ReDoc's sidebar shows its maker's logo from a CDN (hidden when it fails to load) and Swagger UI
can fetch a validator badge: the browser refuses both before any request leaves the machine."""

router = APIRouter(include_in_schema=False)


def _asset(request: Request, name: str) -> str:
    """The asset's URL on this server (behind a proxy's ``root_path`` too)."""
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: every route, tried from the browser ("Authorize" takes the admin token)."""
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{TITLE} - Swagger UI",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
        oauth2_redirect_url=None,  # the only scheme is a bearer token: no OAuth2 flow
        swagger_ui_parameters={"validatorUrl": None},  # no badge from an online validator
    )
    page.headers["Content-Security-Policy"] = POLICY
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the same document as one readable page (no web fonts fetched)."""
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{TITLE} - ReDoc",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = POLICY
    return page


def install_docs(app: FastAPI) -> None:
    """The two pages and their assets (the app is built with ``docs_url=None, redoc_url=None``)."""
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
