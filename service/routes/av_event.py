"""``POST /av-event``: what happens when in a video, second by second (AV-PEA adapters).

Multipart: ``video`` (a container with a sound track), optional ``audio`` (the sound as a separate
file; then the video's own track is ignored), ``adapter`` (``name`` or ``name@version``; also
accepted as ``?adapter=``). The answer gives every second's label and score and the events they
form (consecutive seconds with the same non-background label; background seconds are no event),
with the version that served it and the request id.

Order of work (as ``/classify``): size limit -> resolve the adapter (404 lists what exists; an
audio-only adapter is refused with the route to use) -> decode + per-second features in the
featurize pool (a bad video fails here, alone: 415 not a video, 422 unusable, 413 over a limit,
including a sound track over the decoded-sample budget) -> rows within ``max_request_rows``
-> one engine job per window length (AV rows batch with AV rows; audio batches never wait on
them) -> per-second softmax -> events.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile

from lookaside.checkpoint import AdapterManifest
from lookaside.tasks import AV_EVENTS, Inputs, TaskKind
from lookaside.tasks.av_events import per_second_events, window_segments
from lookaside.video import VideoLimits
from service.av import (
    AvClip,
    WindowGroup,
    assemble,
    cut_audio_notes,
    featurize_av,
    window_groups,
)
from service.deps import EngineDep, RegistryDep, StateDep
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.pipeline import run
from service.request_io import media_allowance, parse_form, read_body
from service.schemas import AvEvent, AvEventResponse, ErrorBody, SecondLabel
from service.settings import ServiceSettings

router = APIRouter(tags=["av-event"])


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown adapter or version (lists what exists)"},
    413: {
        "model": ErrorBody,
        "description": "body over the byte limit, the video over the duration / resolution / "
        "frame-count limits, its sound over the decoded-sample budget (channels x rate x "
        "seconds), or more rows than the per-request limit",
    },
    415: {"model": ErrorBody, "description": "not a video, or not multipart/form-data"},
    422: {
        "model": ErrorBody,
        "description": "corrupt/truncated video, no audio track, no frames, an implausible "
        "audio sample rate, an audio-only adapter, or a malformed field",
    },
    429: {"model": ErrorBody, "description": "queue full (see Retry-After)"},
    503: {"model": ErrorBody, "description": "not ready or shutting down (see Retry-After)"},
    504: {"model": ErrorBody, "description": "not answered within the request timeout"},
}

_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video", "adapter"],
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "audio": {
                            "type": "string",
                            "format": "binary",
                            "description": "the sound as a separate file (optional)",
                        },
                        "adapter": {
                            "type": "string",
                            "minLength": 1,
                            "description": "name or name@version (or the `adapter` query "
                            "parameter; one of them must name it)",
                            "example": "ave@1",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/av-event",
    response_model=AvEventResponse,
    responses=_ERRORS,
    openapi_extra=_BODY_SCHEMA,
    summary="Per-second audio-visual events of a video",
)
async def av_event(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    registry: RegistryDep,
    adapter: Annotated[
        str | None,
        Query(
            description="name or name@version; one of this or the `adapter` form field must "
            "name the adapter (422 without either; the form field wins)"
        ),
    ] = None,
) -> AvEventResponse:
    """Every second's label and the merged events of an uploaded video."""
    started = time.monotonic()
    settings = state.settings
    video, audio, form_adapter = await _read_upload(request, settings.max_media_bytes)
    ref = _parse_ref(form_adapter or adapter)
    media = VideoMedia(video, audio, settings, engine.backbone.cfg.image_size, started)
    deadline = started + settings.request_timeout_s
    served = await run(
        request, media, [ref], deadline, state=state, engine=engine, registry=registry
    )
    (lease,), (logits,) = served.leases, served.logits
    clip = media.clip
    probabilities = assemble(media.groups, logits, clip.seconds)
    seconds, events = per_second_events(probabilities, list(lease.manifest.labels))
    return AvEventResponse(
        request_id=served.request_id,
        adapter=lease.manifest.name,
        version=lease.manifest.version,
        duration_s=round(clip.duration_s, 6),
        seconds=[SecondLabel(t=s.t, label=s.label, score=s.score) for s in seconds],
        events=[
            AvEvent(start_s=e.start_s, end_s=e.end_s, label=e.label, score=e.score) for e in events
        ],
        notes=cut_audio_notes(clip),
    )


class VideoMedia:
    """A video (and optionally its sound as a separate file) for the ``av_events`` task kind
    (:class:`service.pipeline.Media`): frames and sound per one-second segment, cut into windows
    of at most the adapter's segments, one job per group of equal-length windows."""

    task: TaskKind = AV_EVENTS

    def __init__(
        self,
        video: bytes,
        audio: bytes | None,
        settings: ServiceSettings,
        image_size: tuple[int, int],
        started: float,
    ) -> None:
        self.video, self.audio = video, audio
        self.settings = settings
        self.image_size = image_size
        self.deadline = started + settings.request_timeout_s
        self._clip: AvClip | None = None
        self.groups: list[WindowGroup] = []

    @property
    def clip(self) -> AvClip:
        assert self._clip is not None, "the pipeline runs featurize() before reading it"
        return self._clip

    def refuse(self, manifest: AdapterManifest) -> None:
        if not self.task.serves(manifest.method):
            raise BadRequest(
                f"adapter {manifest.id} ({manifest.method}) classifies audio only: send the clip "
                "to POST /classify, or name an audio-visual adapter (method avpea)"
            )

    def featurize(self, manifests: Sequence[AdapterManifest]) -> float:
        settings = self.settings
        limits = VideoLimits(
            max_seconds=settings.max_video_seconds,
            max_side=settings.max_video_side,
            max_frames=settings.max_video_frames,
            max_decoded_samples=settings.max_decoded_samples,
        )
        (manifest,) = manifests
        self._clip = featurize_av(
            self.video, self.audio, manifest.features, self.image_size, limits, self.deadline
        )
        return self._clip.featurize_s

    def inputs(self, manifest: AdapterManifest) -> list[Inputs]:
        clip = self.clip
        self.groups = window_groups(clip, window_segments(manifest.adapter_config()))
        _check_rows(self.groups, clip.seconds, self.settings.max_request_rows)
        return [(group.spec, group.pixels) for group in self.groups]


async def _read_upload(request: Request, limit: int) -> tuple[bytes, bytes | None, str | None]:
    """(video bytes, audio bytes or None, adapter form field) from a multipart body."""
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'!r} is not accepted: send multipart/form-data "
            "with a `video` part (and optionally an `audio` part and an `adapter` field), e.g. "
            "curl -F video=@clip.mp4 -F adapter=ave .../av-event"
        )
    allowed, why = media_allowance(limit, files=2)
    advice = "send a shorter video or raise LOOKASIDE_MAX_MEDIA_BYTES"
    body = await read_body(request, allowed, why=why, advice=advice)
    form = await parse_form(request, body, max_files=2, max_fields=8)
    try:
        parts: dict[str, bytes | None] = {}
        for name in ("video", "audio"):
            upload = form.get(name)
            if upload is None or (isinstance(upload, str) and not upload):
                parts[name] = None
                continue
            if not isinstance(upload, UploadFile):
                raise BadRequest(f"`{name}` must be a file part: -F {name}=@file")
            data = await upload.read()
            if len(data) > limit:
                raise PayloadTooLarge(
                    f"the {name} file is {len(data)} bytes, over the limit of {limit} bytes; send "
                    "a shorter clip or raise LOOKASIDE_MAX_MEDIA_BYTES"
                )
            parts[name] = data
        video = parts["video"]
        if video is None:
            raise BadRequest(
                "the multipart body has no `video` part: send it as -F video=@clip.mp4"
            )
        adapter = form.get("adapter")
        return video, parts["audio"], adapter if isinstance(adapter, str) and adapter else None
    finally:
        await form.close()


def _check_rows(groups: list[WindowGroup], seconds: int, max_rows: int) -> None:
    """Refuse (413) a video whose rows (windows x seconds per window) pass ``max_rows``.

    The features are already bounded by the video limits (duration, frames, decoded samples);
    this keeps what one request sends to the engine within the same per-request row budget as
    ``/classify``.
    """
    rows = sum(len(group.windows) * int(group.spec.shape[1]) for group in groups)
    if rows > max_rows:
        raise PayloadTooLarge(
            f"the {seconds} s video makes {rows} rows (windows x seconds per window), over the "
            f"limit of {max_rows} rows per request; send a shorter video or raise "
            "LOOKASIDE_MAX_REQUEST_ROWS",
            reason="too_many_rows",
        )


def _parse_ref(value: str | None) -> str:
    ref = (value or "").strip()
    if not ref:
        raise BadRequest(
            "name the audio-visual adapter: `adapter=NAME` or `NAME@VERSION` (GET /adapters "
            "lists them)"
        )
    if "," in ref:
        raise BadRequest(f"/av-event takes one adapter per request, got {ref!r}")
    return ref
