"""A ``/stream`` session's opening: the client's :class:`~lookaside.stream_protocol.StreamOpen`
-> the adapters resolved (pinned versions, or names to follow) -> the tracks and their hops ->
the :class:`~lookaside.stream_protocol.StreamReady` answer.

Each adapter is resolved as ``/classify`` resolves it (``registry.acquire``: 404 lists what
exists); every adapter of the opening shares one deadline (the caller's: the opening message's
wait plus ``request_timeout_s``), so a list of slow loads cannot hold a session slot longer. That
first lease is released at once: a session holds a version only while one of its windows runs.
A refusal keeps ``/classify``'s meaning: 404 -> 4404, 503/504 (retry) -> 4503, another 4xx ->
4400, a server error (5xx: a failed load, the engine failing) -> 1011 with the server's message.

Hop: ``hop_s`` is rounded to 10 ms frames and must be at least ``stream_min_hop_s`` and at most
every adapter's window. Without it each adapter keeps its own hop (its checkpoint's
``window_hop_frames``, else its window); one shorter than ``stream_min_hop_s`` is refused
(4400 ``bad_hop`` naming the adapter): ask for a ``hop_s`` within the bounds instead.

Sizes: the opening text is at most ``stream_max_frame_bytes`` (checked by the route before
parsing); pydantic's JSON parser bounds its nesting depth itself (a ValidationError, 4400), and a
RecursionError is caught as well, so no opening can log a trace.

Threads: event loop only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from pydantic import ValidationError

from lookaside.errors import LookasideError
from lookaside.stream_protocol import (
    CloseCode,
    StreamAdapter,
    StreamLimits,
    StreamOpen,
    StreamReady,
    StreamTrack,
)
from lookaside.tasks import CLIP
from service.backend import Adapters
from service.errors import status_of
from service.settings import ServiceSettings
from service.stream.tracks import StreamAdapterRef, Track, build_tracks
from service.stream.windows import StreamClose

__all__ = ["opening_text", "parse_open", "ready_message", "resolve_tracks"]

_STATUS_CODES = {404: CloseCode.NOT_FOUND, 503: CloseCode.NOT_READY, 504: CloseCode.NOT_READY}
_SLUGS = {
    CloseCode.NOT_FOUND: "unknown_adapter",
    CloseCode.NOT_READY: "not_ready",
    CloseCode.BAD_REQUEST: "bad_adapter",
    CloseCode.INTERNAL: "internal",
}


def refusal_of(exc: LookasideError) -> StreamClose:
    """A resolution error -> its close, keeping ``/classify``'s status meaning (module doc)."""
    status = status_of(exc)
    code = _STATUS_CODES.get(status)
    if code is None:
        code = CloseCode.INTERNAL if status >= 500 else CloseCode.BAD_REQUEST
    return StreamClose(code, _SLUGS[code], str(exc))


def parse_open(text: str | None, settings: ServiceSettings) -> StreamOpen:
    """The opening message, or :class:`StreamClose` 4400 saying what is wrong."""
    if text is None:
        raise StreamClose(
            CloseCode.BAD_REQUEST,
            "bad_opening",
            "the first message must be a text frame holding the opening JSON "
            '({"adapters": [...], "sample_rate": ..., "format": "pcm16"}); audio comes after '
            "the ready message",
        )
    try:
        opening = StreamOpen.model_validate_json(text)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
            for e in exc.errors()[:5]
        ]
        raise StreamClose(
            CloseCode.BAD_REQUEST, "bad_opening", "bad opening message: " + "; ".join(problems)
        ) from None
    except RecursionError:
        raise StreamClose(
            CloseCode.BAD_REQUEST, "bad_opening", "bad opening message: nested too deeply"
        ) from None
    if opening.sample_rate > settings.stream_max_sample_rate:
        raise StreamClose(
            CloseCode.BAD_REQUEST,
            "bad_rate",
            f"sample_rate {opening.sample_rate} Hz is over this server's maximum of "
            f"{settings.stream_max_sample_rate} Hz (stream_max_sample_rate); resample the audio "
            "to a lower rate before sending it",
        )
    return opening


async def resolve_tracks(
    opening: StreamOpen, registry: Adapters, settings: ServiceSettings, deadline: float
) -> list[Track]:
    """Resolve every adapter named (all by the monotonic ``deadline``) and group them into
    tracks (or :class:`StreamClose`)."""
    resolved: list[StreamAdapterRef] = []
    for ref in opening.adapters:
        try:
            lease = await registry.acquire(ref, timeout=max(deadline - time.monotonic(), 0.0))
        except LookasideError as exc:
            raise refusal_of(exc) from None
        with lease:
            manifest = lease.manifest
            if not CLIP.serves(manifest.method):
                raise StreamClose(
                    CloseCode.UNSUPPORTED,
                    "audio_visual",
                    f"adapter {manifest.id} ({manifest.method}) is audio-visual and cannot "
                    "classify an audio stream: use POST /av-event",
                )
            resolved.append(
                StreamAdapterRef(
                    ref=manifest.name if opening.follow else manifest.id,
                    name=manifest.name,
                    version=manifest.version,
                    features=manifest.features,
                )
            )
    hops = _hops(opening, resolved, settings)
    return build_tracks(list(zip(resolved, hops, strict=True)), opening.sample_rate)


def _hops(
    opening: StreamOpen, adapters: list[StreamAdapterRef], settings: ServiceSettings
) -> list[int]:
    """Each adapter's hop in 10 ms frames (module docstring)."""
    min_hop = max(1, math.ceil(round(settings.stream_min_hop_s * 100, 6)))
    if opening.hop_s is None:
        for a in adapters:
            if a.features.hop_frames < min_hop:
                raise StreamClose(
                    CloseCode.BAD_REQUEST,
                    "bad_hop",
                    f"adapter {a.name}@{a.version}'s own hop of "
                    f"{a.features.hop_frames / 100:g} s is under "
                    f"this server's minimum of {settings.stream_min_hop_s:g} s "
                    "(stream_min_hop_s; each window is one engine row); send a hop_s of at least "
                    "that",
                )
        return [a.features.hop_frames for a in adapters]
    hop = round(opening.hop_s * 100)
    if hop < min_hop:
        raise StreamClose(
            CloseCode.BAD_REQUEST,
            "bad_hop",
            f"hop_s {opening.hop_s:g} is under this server's minimum of "
            f"{settings.stream_min_hop_s:g} s (stream_min_hop_s; each window is one engine row)",
        )
    for a in adapters:
        if hop > a.features.target_frames:
            raise StreamClose(
                CloseCode.BAD_REQUEST,
                "bad_hop",
                f"hop_s {opening.hop_s:g} is longer than adapter {a.name}@{a.version}'s window "
                f"of {a.features.window_seconds:g} s, so windows would skip audio; use a hop "
                "no longer than the shortest window",
            )
    return [hop] * len(adapters)


def ready_message(
    session: str, opening: StreamOpen, tracks: list[Track], settings: ServiceSettings
) -> StreamReady:
    return StreamReady(
        session=session,
        sample_rate=opening.sample_rate,
        format=opening.format,
        channels=opening.channels,
        follow=opening.follow,
        tracks=[
            StreamTrack(
                track=t.index,
                window_s=round(t.window_s, 6),
                hop_s=t.hop_s,
                adapters=[StreamAdapter(adapter=a.name, version=a.version) for a in t.adapters],
            )
            for t in tracks
        ],
        limits=StreamLimits(
            max_seconds=settings.stream_max_seconds,
            idle_timeout_s=settings.stream_idle_timeout_s,
            max_ahead_s=settings.stream_max_ahead_s,
            max_frame_bytes=settings.stream_max_frame_bytes,
            max_pending_windows=settings.stream_max_pending_windows,
            max_unsent=settings.stream_max_unsent,
            max_unsent_bytes=settings.stream_max_unsent_bytes,
            max_sample_rate=settings.stream_max_sample_rate,
        ),
    )


def opening_text(message: Mapping[str, object]) -> str | None:
    """The text of a first message (None for a binary one)."""
    text = message.get("text")
    return text if isinstance(text, str) else None
