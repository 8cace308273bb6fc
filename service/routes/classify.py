"""``POST /classify``: one clip through one or more adapters.

The clip arrives as multipart (``file`` + ``adapter`` [+ ``top_k``]) or as the raw body
(``Content-Type: audio/*`` or ``application/octet-stream``) with ``?adapter=``, so
``curl --data-binary @clip.wav -H 'Content-Type: audio/wav' '.../classify?adapter=esc50'`` works.
``adapter`` is ``name`` (its active version), ``name@version``, or a comma-separated list of
those: the clip then runs through each, in the same batch, with one result each.

Order of work: size limit -> resolve every adapter (404 lists what exists) -> decode and featurise
once per distinct feature config in the featurize pool (bad audio fails here, alone) -> one job per
adapter into the engine -> scores. Clips longer than an adapter's window are cut into windows
(``window_hop_frames`` apart); each window is scored, the ``timeline`` lists each window's top
labels, and the clip-level ``labels`` are the **mean of the window scores**.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from torch import Tensor

from lookaside.checkpoint import AdapterManifest
from lookaside.clip_scores import clip_scores, top_labels, window_end
from lookaside.tasks import CLIP, Inputs, TaskKind
from service.deps import EngineDep, RegistryDep, StateDep
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.featurize import ClipWindows, Featurized, featurize
from service.pipeline import run
from service.request_io import media_allowance, parse_form, read_body
from service.schemas import AdapterResult, ClassifyResponse, ErrorBody, LabelScore, Window
from service.settings import ServiceSettings

router = APIRouter(tags=["classify"])

MAX_ADAPTERS_PER_REQUEST = 16
_RAW_TYPES = ("audio/", "video/", "application/octet-stream")

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown adapter or version (lists what exists)"},
    413: {
        "model": ErrorBody,
        "description": "body over the byte limit, clip over the duration, audio that decodes to "
        "more samples than the budget (channels x rate x seconds), or more windows than the "
        "per-request limit",
    },
    415: {"model": ErrorBody, "description": "not audio, or an unsupported Content-Type"},
    422: {
        "model": ErrorBody,
        "description": "empty/truncated audio, an implausible sample rate, no adapter named, "
        "more adapters than one request may name, or a malformed field",
    },
    429: {"model": ErrorBody, "description": "queue full (see Retry-After)"},
    503: {"model": ErrorBody, "description": "not ready or shutting down (see Retry-After)"},
    504: {"model": ErrorBody, "description": "not answered within the request timeout"},
}

_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the clip: multipart (`file` and `adapter` required, optional `top_k`) "
        "or raw bytes (`audio/*` or `application/octet-stream`) with `?adapter=`; one of the "
        "`adapter` form field or the `adapter` query parameter must name the adapter(s)",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "adapter"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "adapter": {
                            "type": "string",
                            "minLength": 1,
                            "description": "name, name@version, or a comma-separated list "
                            f"(at most {MAX_ADAPTERS_PER_REQUEST}, and at most the engine's "
                            "queue capacity)",
                            "example": "esc50,speech@3",
                        },
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra=_BODY_SCHEMA,
    summary="Classify a clip with one or more adapters",
)
async def classify(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    registry: RegistryDep,
    adapter: Annotated[
        str | None,
        Query(
            description="name, name@version, or a comma-separated list. Required for raw-body "
            "uploads (422 without it); multipart uploads send it as the `adapter` form field "
            "instead (a form field wins over this parameter)",
            examples=["esc50", "esc50@2,speech"],
        ),
    ] = None,
    top_k: Annotated[int | None, Query(ge=1, le=1000, description="labels per result")] = None,
) -> ClassifyResponse:
    """Top-k labels of the clip for each adapter named (timeline for long clips)."""
    started = time.monotonic()
    settings = state.settings
    data, form_adapter, form_top_k = await _read_clip(request, settings.max_media_bytes)
    refs = _parse_refs(form_adapter or adapter, settings.queue_capacity)
    k = _parse_top_k(form_top_k, top_k)
    clip = ClipMedia(data, settings)
    deadline = started + settings.request_timeout_s
    served = await run(request, clip, refs, deadline, state=state, engine=engine, registry=registry)
    feats = clip.featurized
    results = [
        _result(lease.manifest, feats.by_config[lease.manifest.features], out, k, feats.duration_s)
        for lease, (out,) in zip(served.leases, served.logits, strict=True)
    ]
    return ClassifyResponse(
        request_id=served.request_id, duration_s=round(feats.duration_s, 6), results=results
    )


class ClipMedia:
    """A clip for the ``clip`` task kind (:class:`service.pipeline.Media`): featurised once per
    distinct feature config of the adapters named, one job of windows per adapter."""

    task: TaskKind = CLIP

    def __init__(self, data: bytes, settings: ServiceSettings) -> None:
        self.data = data
        self.settings = settings
        self._featurized: Featurized | None = None

    @property
    def featurized(self) -> Featurized:
        assert self._featurized is not None, "the pipeline runs featurize() before reading it"
        return self._featurized

    def refuse(self, manifest: AdapterManifest) -> None:
        if not self.task.serves(manifest.method):
            raise BadRequest(
                f"adapter {manifest.id} ({manifest.method}) is audio-visual: send the "
                "video to POST /av-event (multipart `video`, `adapter`)"
            )

    def featurize(self, manifests: Sequence[AdapterManifest]) -> float:
        settings = self.settings
        self._featurized = featurize(
            self.data,
            [m.features for m in manifests],
            max_seconds=settings.max_audio_seconds,
            max_samples=settings.max_decoded_samples,
            max_rows=settings.max_request_rows,
            max_feature_bytes=settings.max_request_feature_bytes,
        )
        return self._featurized.seconds

    def inputs(self, manifest: AdapterManifest) -> list[Inputs]:
        return [(self.featurized.by_config[manifest.features].features,)]


# -- input ----------------------------------------------------------------------------------------
_SHORTER = "send a shorter clip or raise LOOKASIDE_MAX_MEDIA_BYTES"


async def _read_clip(request: Request, limit: int) -> tuple[bytes, str | None, str | None]:
    """(audio bytes, adapter form field, top_k form field) from multipart or a raw body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        allowed, why = media_allowance(limit)
        body = await read_body(request, allowed, why=why, advice=_SHORTER)
        return await _parse_multipart(request, body, limit)
    if content_type.startswith(_RAW_TYPES):
        why = f"LOOKASIDE_MAX_MEDIA_BYTES = {limit}"
        return await read_body(request, limit, why=why, advice=_SHORTER), None, None
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not accepted: send multipart/form-data "
        "with a `file` part, or the raw clip as audio/* or application/octet-stream with "
        "?adapter=NAME"
    )


async def _parse_multipart(
    request: Request, body: bytes, limit: int
) -> tuple[bytes, str | None, str | None]:
    form = await parse_form(request, body, max_files=1, max_fields=8)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest(
                "the multipart body has no `file` part holding the clip: send it as "
                "-F file=@clip.wav"
            )
        data = await upload.read()
        if len(data) > limit:
            raise PayloadTooLarge(
                f"the file is {len(data)} bytes, over the limit of {limit} bytes; send a "
                "shorter clip or raise LOOKASIDE_MAX_MEDIA_BYTES"
            )
        adapter = form.get("adapter")
        top_k = form.get("top_k")
        return (
            data,
            adapter if isinstance(adapter, str) and adapter else None,
            top_k if isinstance(top_k, str) and top_k else None,
        )
    finally:
        await form.close()


def _parse_refs(value: str | None, queue_capacity: int) -> list[str]:
    """The adapter references of ``value``, at most as many as one request can ever queue.

    Each adapter is one engine job, so more than ``queue_capacity`` could never be queued at
    once: that gets a 422 naming the limit, not a 429 that no retry can cure.
    """
    if not value or not value.strip():
        raise BadRequest(
            "name the adapter(s): `adapter=NAME`, `NAME@VERSION` or a comma-separated list "
            "(GET /adapters lists them)"
        )
    refs = list(dict.fromkeys(r.strip() for r in value.split(",") if r.strip()))
    if not refs:
        raise BadRequest("`adapter` holds no adapter name; e.g. adapter=esc50 or esc50@2")
    if len(refs) > MAX_ADAPTERS_PER_REQUEST:
        raise BadRequest(
            f"{len(refs)} adapters in one request, over the limit of {MAX_ADAPTERS_PER_REQUEST}; "
            "split them over several requests"
        )
    if len(refs) > queue_capacity:
        raise BadRequest(
            f"{len(refs)} adapters in one request, but the engine queue holds at most "
            f"{queue_capacity} jobs (one per adapter), so it could never be queued; split them "
            "over several requests or raise LOOKASIDE_QUEUE_CAPACITY"
        )
    return refs


def _parse_top_k(form_value: str | None, query_value: int | None) -> int:
    if form_value is None:
        return query_value or 5
    if not form_value.strip().isdigit() or not 1 <= int(form_value) <= 1000:
        raise BadRequest(f"top_k must be an integer from 1 to 1000, got {form_value!r}")
    return int(form_value)


# -- output ---------------------------------------------------------------------------------------
def _top(scores: Tensor, labels: list[str], k: int) -> list[LabelScore]:
    return [LabelScore(label=label, score=score) for label, score in top_labels(scores, labels, k)]


def _result(
    manifest: AdapterManifest, windows: ClipWindows, logits: Tensor, k: int, duration_s: float
) -> AdapterResult:
    scores, clip = clip_scores(logits, multi_label=manifest.task_type == "multilabel")
    labels = list(manifest.labels)
    timeline = None
    if scores.shape[0] > 1:
        timeline = [
            Window(
                start_s=round(start, 6),
                end_s=round(window_end(start, windows.window_s, duration_s), 6),
                labels=_top(row, labels, k),
            )
            for start, row in zip(windows.start_s, scores, strict=True)
        ]
    return AdapterResult(
        adapter=manifest.name,
        version=manifest.version,
        labels=_top(clip, labels, k),
        timeline=timeline,
    )
