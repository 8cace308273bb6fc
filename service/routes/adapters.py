"""Adapter management: upload, list, inspect, activate / roll back, delete (Triton-style explicit
model control over the store, TorchServe's management API shape).

Thin over :class:`~service.registry.AdapterRegistry` (residency, hot swap) and
:class:`~service.store.AdapterStore` (versions on disk). Every mutating route needs
``Authorization: Bearer <admin token>`` (401 without, 403 wrong). Errors are raised as project
exceptions and answered by :mod:`service.errors` (404 lists what exists, 409 deleting the active
version without ``force``, 413 too large, 422 invalid checkpoint, 503 cannot load now).

``curl`` examples::

    curl -H "Authorization: Bearer $TOKEN" -F manifest=@esc50/manifest.json \\
         -F weights=@esc50/adapter.safetensors 'http://127.0.0.1:8000/adapters?activate=true'
    curl -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
         -d '{"version": 1}' http://127.0.0.1:8000/adapters/esc50/activate
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from lookaside.checkpoint import AdapterManifest
from lookaside.errors import AdapterNotFound
from service.deps import AdminDep, RegistryDep, SettingsDep
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.registry import VersionStatus
from service.schemas import ErrorBody
from service.schemas_adapters import (
    ActivateRequest,
    ActivateResult,
    AdapterInfo,
    AdapterList,
    AdapterSummary,
    DeleteResult,
    UploadResult,
    VersionInfo,
)
from service.store import DEFAULT_MAX_MANIFEST_BYTES

router = APIRouter(prefix="/adapters", tags=["adapters"])

_MULTIPART_SLACK = 64 * 1024  # part headers and boundaries
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


@router.get("")
def list_adapters(registry: Registry) -> AdapterList:
    """Every adapter in the store: versions, active version, residency."""
    out = []
    for name in registry.store.names():
        statuses = registry.status(name)
        if not statuses:
            continue  # deleted meanwhile
        active = registry.store.active(name)
        shown = active if active is not None else statuses[-1].version
        try:
            manifest: AdapterManifest | None = registry.store.manifest(name, shown)
        except AdapterNotFound:
            manifest = None
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
    return AdapterList(adapters=out)


@router.get("/{name}", responses=_NOT_FOUND)
def get_adapter(name: str, registry: Registry) -> AdapterInfo:
    """One adapter: every version's manifest essentials, state, residency and request counts."""
    statuses = registry.status(name)
    if not statuses:
        raise AdapterNotFound(f"unknown adapter {name!r}; {registry.store.describe(name)}")
    active = registry.store.active(name)
    versions = []
    for status in statuses:
        try:
            manifest = registry.store.manifest(name, status.version)
        except AdapterNotFound:
            continue  # deleted meanwhile
        versions.append(_version_info(status, manifest, active))
    return AdapterInfo(
        name=name,
        active=active,
        state=next((v.state for v in versions if v.active), None),
        requests=sum(v.requests for v in versions),
        versions=versions,
    )


@router.post(
    "/{name}/activate",
    dependencies=[AdminDep],
    responses={
        **_AUTH,
        **_NOT_FOUND,
        503: {"model": ErrorBody, "description": "the version could not be loaded now"},
    },
)
async def activate_adapter(name: str, body: ActivateRequest, registry: Registry) -> ActivateResult:
    """Make a stored version live (load it, then flip the pointer); older version = rollback."""
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


async def _read_upload(request: Request, limit: int) -> tuple[bytes, bytes]:
    """(manifest bytes, weights bytes) of a multipart upload; 413 as soon as it is too large."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'!r} is not accepted: send multipart/form-data "
            "with a `manifest` part (manifest.json) and a `weights` part (adapter.safetensors), "
            "e.g. curl -F manifest=@manifest.json -F weights=@adapter.safetensors"
        )
    body_limit = limit + DEFAULT_MAX_MANIFEST_BYTES + _MULTIPART_SLACK
    body = await _read_body(request, body_limit, limit)

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    # Starlette's parser, but the file parts stay in memory (the body is already bounded and
    # read): its default spools parts over 1 MB to disk and reads them back, ~40 % of the
    # route's time for an 8 MB adapter.
    parser = MultiPartParser(request.headers, stream(), max_files=2, max_fields=2)
    parser.spool_max_size = len(body) + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
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


async def _read_body(request: Request, limit: int, file_limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes."""
    message = (
        "the upload is {size} bytes, over the limit of {limit} bytes ({file_limit} per file); "
        "upload a smaller adapter or raise LOOKASIDE_MAX_UPLOAD_BYTES"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(message.format(size=declared, limit=limit, file_limit=file_limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                message.format(size=f"more than {limit}", limit=limit, file_limit=file_limit)
            )
        chunks.append(chunk)
    return b"".join(chunks)
