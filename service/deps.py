"""What routes receive: the app's state, built in the lifespan, handed over as ``Annotated``
dependencies, so nothing is a module-level global and tests inject a tiny backbone.

``AdminDep`` guards every mutating route: ``Authorization: Bearer <admin token>``; 401 without a
token, 403 with a wrong one (compared in constant time). With ``allow_no_admin_token`` and no token
configured (development only) the routes are open.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.backend import Adapters, Jobs
from service.errors import NotReady
from service.http_limits import InflightBytes
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings
from service.store import AdapterStore

if TYPE_CHECKING:
    from lookaside.backbone import VisionTransformer


@dataclass
class AppState:
    """Everything one app owns; built by :func:`service.app.create_app`'s lifespan."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    featurize_pool: ThreadPoolExecutor
    body_budget: InflightBytes
    """Request-body bytes in flight over all requests (:class:`service.http_limits.BodyLimits`)."""
    engine: Jobs | None = None
    """The engine (one process) or the Ray ingress's remote engine (:mod:`service.backend`)."""
    store: AdapterStore | None = None
    registry: Adapters | None = None
    backbone: VisionTransformer | None = None
    ready: bool = False
    reason: str | None = "starting"
    """Why the app is not ready (None once ready)."""
    shutting_down: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def require_ready(self) -> None:
        """Raise 503 + Retry-After unless serving."""
        if self.shutting_down:
            raise NotReady("the server is shutting down; retry shortly", reason="shutting_down")
        if not self.ready:
            raise NotReady(f"the server is not ready yet ({self.reason}); retry shortly")


def get_state(request: Request) -> AppState:
    """The app's state (set in the lifespan)."""
    state = request.app.state.lookaside
    assert isinstance(state, AppState)
    return state


def get_engine(request: Request) -> Jobs:
    state = get_state(request)
    state.require_ready()
    if state.engine is None:
        raise NotReady(f"the engine is not running ({state.reason}); retry shortly")
    return state.engine


def get_store(request: Request) -> AdapterStore:
    state = get_state(request)
    if state.store is None:
        raise NotReady(f"the store is not open yet ({state.reason}); retry shortly")
    return state.store


def get_registry(request: Request) -> Adapters:
    state = get_state(request)
    if state.registry is None:
        raise NotReady(f"the adapter registry is not ready yet ({state.reason}); retry shortly")
    return state.registry


def get_settings(request: Request) -> ServiceSettings:
    return get_state(request).settings


_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="The admin token (LOOKASIDE_ADMIN_TOKEN_FILE or LOOKASIDE_ADMIN_TOKEN).",
)
"""Declares the admin routes' bearer auth in the OpenAPI document; the checks are ours."""


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    """``Authorization: Bearer <admin token>``: 401 without, 403 wrong."""
    settings = get_settings(request)
    token = settings.admin_token.get_secret_value()
    if not token and settings.allow_no_admin_token:
        return
    given = credentials.credentials.strip() if credentials is not None else ""
    if not given:
        raise HTTPException(
            status_code=401,
            detail="this route needs the admin token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token or not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(status_code=403, detail="wrong admin token")


StateDep = Annotated[AppState, Depends(get_state)]
EngineDep = Annotated[Jobs, Depends(get_engine)]
StoreDep = Annotated[AdapterStore, Depends(get_store)]
RegistryDep = Annotated[Adapters, Depends(get_registry)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
AdminDep = Depends(require_admin)
"""Use as ``dependencies=[AdminDep]`` on mutating routes."""
