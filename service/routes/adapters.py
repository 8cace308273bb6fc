"""Adapter management: upload, list, inspect, activate / roll back, delete (Triton-style explicit
model control over the store, TorchServe's management API shape).

Reads (``GET /adapters`` a page at a time with ``limit`` and ``cursor``, ``GET /adapters/{name}``)
come from the store's in-memory index: their cost follows the size of the answer, never the
store's. Every admin route checks the token before it reads or parses anything of the request
(its body, its query): a request without the right token gets 401/403 whatever it sends.

Thin over :class:`~service.registry.AdapterRegistry` (residency, hot swap) and
:class:`~service.store.AdapterStore` (versions on disk). Every mutating route needs
``Authorization: Bearer <admin token>`` (401 without, 403 wrong). Errors are raised as project
exceptions and answered by :mod:`service.errors` (404 says what exists or is close, 409 deleting
the active version without ``force``, 413 too large, 422 invalid checkpoint, 503 cannot load now).

``curl`` examples::

    curl -H "Authorization: Bearer $TOKEN" -F manifest=@esc50/manifest.json \\
         -F weights=@esc50/adapter.safetensors 'http://127.0.0.1:8000/adapters?activate=true'
    curl -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
         -d '{"version": 1}' http://127.0.0.1:8000/adapters/esc50/activate
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from lookaside.checkpoint import AdapterManifest
from lookaside.errors import AdapterNotFound
from service.deps import AdminDep, RegistryDep, SettingsDep
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.registry import VersionStatus
from service.request_io import MULTIPART_SLACK, parse_form, read_body
from service.schemas import ErrorBody
from service.schemas.adapters import (
    ActivateRequest,
    ActivateResult,
    AdapterInfo,
    AdapterList,
    AdapterSummary,
    DeleteResult,
    UploadResult,
    VersionInfo,
)
from service.store import DEFAULT_MAX_MANIFEST_BYTES, NAME_PATTERN

router = APIRouter(prefix="/adapters", tags=["adapters"])

DEFAULT_PAGE = 100
"""Adapters per ``GET /adapters`` page unless ``limit`` says otherwise."""
MAX_PAGE = 1000
"""Largest ``limit``: bounds one listing's work and answer (~300 B per adapter)."""
MAX_ACTIVATE_BODY_BYTES = 4096
"""``{"version": 3}`` is 14 bytes; a larger activate body is refused unread (413)."""
_CURSOR_PREFIX = "after:"
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no `Authorization: Bearer <admin token>` header"},
    403: {"model": ErrorBody, "description": "wrong admin token"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown adapter or version (lists what exists)"},
}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the checkpoint as two parts: `manifest` (manifest.json) and `weights` "
        "(adapter.safetensors)",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["manifest", "weights"],
                    "properties": {
                        "manifest": {"type": "string", "format": "binary"},
                        "weights": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}
_ACTIVATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the stored version to make live",
        "content": {"application/json": {"schema": ActivateRequest.model_json_schema()}},
    }
}


Registry = RegistryDep


@router.post(
    "",
    status_code=201,
    dependencies=[AdminDep],
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": UploadResult, "description": "identical content was already stored"},
        **_AUTH,
        409: {"model": ErrorBody, "description": "made for another backbone"},
        413: {"model": ErrorBody, "description": "a file is over the upload limit"},
        415: {"model": ErrorBody, "description": "not a multipart/form-data body"},
        422: {"model": ErrorBody, "description": "invalid checkpoint (the message says what)"},
        503: {"model": ErrorBody, "description": "stored, but could not be activated now"},
    },
)
async def upload_adapter(
    request: Request,
    response: Response,
    registry: Registry,
    settings: SettingsDep,
    activate: Annotated[
        bool, Query(description="make the new version live at once (after it is loaded)")
    ] = False,
) -> UploadResult:
    """Upload an adapter checkpoint as a new version (201), or find it already stored (200)."""
    manifest, weights = await _read_upload(request, settings.max_upload_bytes)
    result = await registry.upload(manifest, weights, activate=activate)
    if not result.created:
        response.status_code = 200
    return UploadResult(
        name=result.name, version=result.version, created=result.created, active=result.active
    )


@router.get(
    "",
    responses={422: {"model": ErrorBody, "description": "`limit` out of range or a bad `cursor`"}},
)
def list_adapters(
    registry: Registry,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE, description=f"adapters per page (at most {MAX_PAGE})")
    ] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(
            max_length=128,
            description="`next_cursor` of the previous page (omit it for the first page)",
        ),
    ] = None,
) -> AdapterList:
    """Adapters sorted by name, a page at a time: versions, active version, residency."""
    store = registry.store
    names, more = store.page(_decode_cursor(cursor), limit)
    out = []
    for name in names:
        stored = store.get(name)
        statuses = registry.status(name)
        if stored is None or not statuses:
            continue  # deleted meanwhile
        active = stored.active
        shown = stored.versions.get(active if active is not None else statuses[-1].version)
        manifest = shown.manifest if shown is not None else None
        out.append(
            AdapterSummary(
                name=name,
                active=active,
                versions=[s.version for s in statuses],
                resident=[s.version for s in statuses if s.resident],
                state=next((s.state for s in statuses if s.version == active), None),
                task=manifest.task if manifest else None,
                method=manifest.method if manifest else None,
            )
        )
    next_cursor = _encode_cursor(names[-1]) if more and names else None
    return AdapterList(adapters=out, next_cursor=next_cursor, total=store.name_count())


@router.get("/{name}", responses=_NOT_FOUND)
def get_adapter(name: str, registry: Registry) -> AdapterInfo:
    """One adapter: every version's manifest essentials, state, residency and request counts."""
    stored = registry.store.get(name)
    statuses = registry.status(name)
    if stored is None or not statuses:
        raise AdapterNotFound(f"unknown adapter {name!r}; {registry.store.describe(name)}")
    versions = []
    for status in statuses:
        version = stored.versions.get(status.version)
        if version is None or version.manifest is None:
            continue  # deleted meanwhile, or a manifest edited on disk (loading it says why)
        versions.append(_version_info(status, version.manifest, stored.active))
    return AdapterInfo(
        name=name,
        active=stored.active,
        state=next((v.state for v in versions if v.active), None),
        requests=sum(v.requests for v in versions),
        versions=versions,
    )


@router.post(
    "/{name}/activate",
    dependencies=[AdminDep],
    openapi_extra=_ACTIVATE_BODY,
    responses={
        **_AUTH,
        **_NOT_FOUND,
        413: {"model": ErrorBody, "description": "the body is over 4096 bytes"},
        422: {"model": ErrorBody, "description": 'the body is not `{"version": <int>}`'},
        503: {"model": ErrorBody, "description": "the version could not be loaded now"},
    },
)
async def activate_adapter(name: str, request: Request, registry: Registry) -> ActivateResult:
    """Make a stored version live (load it, then flip the pointer); older version = rollback."""
    # The body is read here, after AdminDep: a request without the token never gets it parsed.
    body = _activate_request(await _read_small_json(request, MAX_ACTIVATE_BODY_BYTES))
    previous = registry.store.active(name)
    await registry.activate(name, body.version)
    return ActivateResult(name=name, active=body.version, previous=previous)


@router.delete(
    "/{name}/versions/{version}",
    dependencies=[AdminDep],
    responses={
        **_AUTH,
        **_NOT_FOUND,
        409: {"model": ErrorBody, "description": "it is the active version and force is off"},
    },
)
async def delete_version(
    name: str,
    version: int,
    registry: Registry,
    force: Annotated[
        bool, Query(description="also delete the active version (the newest other one takes over)")
    ] = False,
) -> DeleteResult:
    """Delete one version; in-flight requests on it finish first, then it is unloaded."""
    active = await registry.delete_version(name, version, force=force)
    return DeleteResult(name=name, deleted=[version], active=active)


@router.delete("/{name}", dependencies=[AdminDep], responses={**_AUTH, **_NOT_FOUND})
async def delete_adapter(name: str, registry: Registry) -> DeleteResult:
    """Delete an adapter and all its versions; in-flight requests finish first."""
    deleted = await registry.delete(name)
    return DeleteResult(name=name, deleted=deleted, active=None)


# -- helpers -------------------------------------------------------------------------------------
def _version_info(status: VersionStatus, m: AdapterManifest, active: int | None) -> VersionInfo:
    return VersionInfo(
        version=status.version,
        active=status.version == active,
        state=status.state,
        reason=status.reason,
        resident=status.resident,
        pinned=status.pinned,
        in_flight=status.in_flight,
        requests=status.requests,
        loads=status.loads,
        evictions=status.evictions,
        load_seconds=status.load_seconds,
        tier=status.tier,
        task=m.task,
        task_type=m.task_type,
        method=m.method,
        config=m.config,
        labels=m.labels,
        trainable_params=m.trainable_params,
        trainable_percent=m.trainable_percent,
        metrics=m.metrics,
        backbone=f"{m.backbone.name}@{m.backbone.fingerprint}",
        weights_sha256=m.weights_sha256,
        created=m.created,
    )


def _encode_cursor(name: str) -> str:
    """An opaque cursor for "the names after ``name``"."""
    raw = (_CURSOR_PREFIX + name).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    """The name a cursor of :func:`_encode_cursor` stands for; 422 for anything else."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    name = text.removeprefix(_CURSOR_PREFIX)
    if not (text.startswith(_CURSOR_PREFIX) and NAME_PATTERN.fullmatch(name)):
        raise BadRequest(
            "cursor is not one this server gave: pass the `next_cursor` of the previous page "
            "unchanged, or omit `cursor` to start at the first page"
        )
    return name


async def _read_small_json(request: Request, limit: int) -> object:
    """The JSON body, read only up to ``limit`` bytes (413 past it); 422 if it is not JSON."""
    declared = request.headers.get("content-length", "")
    too_large = (
        f'the body is over the limit of {limit} bytes; send only {{"version": <stored version>}}'
    )
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body",),
                    "msg": f"the body is not valid JSON ({exc}); send "
                    '{"version": <stored version>} with Content-Type: application/json',
                }
            ]
        ) from None


def _activate_request(data: object) -> ActivateRequest:
    """``data`` validated as an :class:`ActivateRequest` (422 naming the field otherwise)."""
    try:
        return ActivateRequest.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def _read_upload(request: Request, limit: int) -> tuple[bytes, bytes]:
    """(manifest bytes, weights bytes) of a multipart upload; 413 as soon as it is too large."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'!r} is not accepted: send multipart/form-data "
            "with a `manifest` part (manifest.json) and a `weights` part (adapter.safetensors), "
            "e.g. curl -F manifest=@manifest.json -F weights=@adapter.safetensors"
        )
    allowed = limit + DEFAULT_MAX_MANIFEST_BYTES + MULTIPART_SLACK
    why = (
        f"LOOKASIDE_MAX_UPLOAD_BYTES = {limit} for the weights, {DEFAULT_MAX_MANIFEST_BYTES} for "
        f"the manifest, plus {MULTIPART_SLACK // 1024} KiB of multipart framing"
    )
    advice = "upload a smaller adapter or raise LOOKASIDE_MAX_UPLOAD_BYTES"
    body = await read_body(request, allowed, why=why, advice=advice)

    form = await parse_form(request, body, max_files=2, max_fields=2)
    try:
        parts = {}
        for field, what in (("manifest", "manifest.json"), ("weights", "adapter.safetensors")):
            value = form.get(field)
            if isinstance(value, UploadFile):
                data = await value.read()
            elif isinstance(value, str):
                data = value.encode("utf-8")
            else:
                raise BadRequest(
                    f"the multipart body has no `{field}` part: send {what} as -F {field}=@{what}"
                )
            if len(data) > limit:
                raise PayloadTooLarge(
                    f"the {field} part is {len(data)} bytes, over the upload limit of {limit} "
                    "bytes; upload a smaller adapter or raise LOOKASIDE_MAX_UPLOAD_BYTES"
                )
            parts[field] = data
        return parts["manifest"], parts["weights"]
    finally:
        await form.close()
