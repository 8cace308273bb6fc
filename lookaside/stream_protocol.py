"""The live-streaming protocol of ``GET /stream`` (a WebSocket): messages, close codes and the
window arithmetic, defined once for the server (:mod:`service.stream`), the Python client
(:mod:`lookaside.client.stream`) and the tests.

A session, in order (docs/streaming.md):

1. The client opens with one text frame, :class:`StreamOpen` (JSON): the adapters, the sample
   rate, sample format and channel count of the audio it will send, an optional hop, whether to
   follow the active version, and top-k.
2. The server answers :class:`StreamReady` (the versions it pinned, each track's window and hop,
   the limits), or :class:`StreamError` and a close.
3. The client sends binary frames of any size: little-endian samples, channels interleaved
   (a frame holds whole sample frames: a multiple of ``channels x bytes per sample``).
4. The server sends one :class:`StreamWindow` per window as it is answered, in stream order per
   track, or :class:`StreamDropped` for a window it could not answer (with the reason).
5. The client may send ``{"type": "end"}``: the server cuts the tail window, answers what is
   pending, sends :class:`StreamEnd` and closes with 1000.

Windows (:func:`window_starts`, :func:`window_span`): adapters that share a window (frames and
hop) form one *track*. Window ``k`` of a track covers samples
``[k * hop * rate // 100, start + span)`` of the stream at the client's rate, where ``span`` is
the samples that make exactly ``target_frames`` fbank frames (25 ms analysis window, 10 ms shift).
Each window is featurised alone, exactly as ``POST /classify`` featurises a clip holding those
samples, so a window's scores equal ``/classify`` on the same samples cut offline. A window is
cut once all its samples have arrived; at ``end``, the audio after the last full window (if any,
and at least one 25 ms analysis window long) makes one shorter tail window, zero-padded as
``/classify`` pads a short clip.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lookaside.decode_probe import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

__all__ = [
    "FORMATS",
    "MAX_CHANNELS",
    "MAX_STREAM_ADAPTERS",
    "CloseCode",
    "StreamAdapter",
    "StreamDropped",
    "StreamEnd",
    "StreamError",
    "StreamLabel",
    "StreamLimits",
    "StreamOpen",
    "StreamReady",
    "StreamResult",
    "StreamTrack",
    "StreamWindow",
    "bytes_per_frame",
    "full_windows",
    "tail_window",
    "window_span",
    "window_start",
]

MAX_STREAM_ADAPTERS = 16
"""Most adapters one session names (as one ``/classify`` request)."""
MAX_CHANNELS = 8
"""Most interleaved channels a session may send (downmixed to mono on arrival)."""
FORMATS: dict[str, int] = {"pcm16": 2, "f32": 4}
"""Sample formats and their bytes per sample (little-endian)."""

_FRAME_SHIFT_MS = 10
_FRAME_LENGTH_MS = 25


class CloseCode(IntEnum):
    """WebSocket close codes of a session. Before every close but 1000 and 1001 the server sends
    :class:`StreamError` with the same ``code``, the reason slug and a sentence saying what to
    change (docs/streaming.md lists every reason)."""

    NORMAL = 1000
    """The client sent ``end``; every window was answered."""
    GOING_AWAY = 1001
    """The server is shutting down (reconnect, to another replica if there is one)."""
    TOO_BIG = 1009
    """One message over ``stream_max_frame_bytes`` (``frame_too_big``; under uvicorn the
    WebSocket layer may close first, without the error message)."""
    INTERNAL = 1011
    """A server error (the log has the trace)."""
    BAD_REQUEST = 4400
    """A bad opening message, a malformed frame (partial sample frame, non-finite float, text
    that is not ``end``), or a hop outside the bounds."""
    NOT_FOUND = 4404
    """An adapter or version that does not exist (or was deleted while pinned)."""
    IDLE = 4408
    """No opening message within ``stream_open_timeout_s``, no frame for
    ``stream_idle_timeout_s`` (``idle``), or audio arriving so much slower than real time that it
    falls ``stream_idle_timeout_s`` behind (``starved``)."""
    TOO_LONG = 4413
    """The session sent more than ``stream_max_seconds`` of audio."""
    UNSUPPORTED = 4415
    """An adapter that does not classify audio clips (audio-visual: use ``POST /av-event``)."""
    TOO_MANY_SESSIONS = 4429
    """``stream_max_sessions`` sessions are live (retry later or on another replica)."""
    AHEAD_OF_REAL_TIME = 4430
    """The client sent audio faster than real time by more than ``stream_max_ahead_s``."""
    NOT_READING = 4431
    """More than ``stream_max_unsent`` answered windows (or ``stream_max_unsent_bytes`` of
    messages) waited for the client to read them. The error and close frame are sent with a short
    bound: a client that does not read may see only the connection drop (1006)."""
    NOT_READY = 4503
    """The server is not ready (starting, or the engine is stalled)."""


class StreamOpen(BaseModel):
    """The client's opening message."""

    model_config = ConfigDict(extra="forbid")

    adapters: Annotated[list[str], Field(min_length=1, max_length=MAX_STREAM_ADAPTERS)]
    """``name`` (its active version when the session opens) or ``name@version``; a
    comma-separated string is accepted too."""
    sample_rate: int = Field(ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    """Rate of the audio frames, Hz."""
    format: Literal["pcm16", "f32"] = "pcm16"
    """``pcm16``: signed 16-bit little-endian; ``f32``: float32 little-endian in [-1, 1]."""
    channels: int = Field(1, ge=1, le=MAX_CHANNELS)
    """Interleaved channels per sample frame (downmixed to mono by channel mean)."""
    hop_s: float | None = Field(None, gt=0.0, le=60.0)
    """Seconds between window starts, for every adapter; None: each adapter's own hop (its
    checkpoint's ``window_hop_frames``, else its window). Rounded to 10 ms frames."""
    follow: bool = False
    """False: the versions resolved at open serve the whole session (pinned). True: each window
    is served by the version active when it is cut (a swap moves the session)."""
    top_k: int = Field(5, ge=1, le=1000)
    """Labels per adapter per window."""

    @field_validator("adapters", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return list(dict.fromkeys(r.strip() for r in v.split(",") if r.strip()))
        if isinstance(v, list):
            return list(dict.fromkeys(r.strip() if isinstance(r, str) else r for r in v))
        return v


class StreamAdapter(BaseModel):
    adapter: str
    version: int
    """The version resolved at open (pinned unless ``follow``)."""


class StreamTrack(BaseModel):
    """Adapters that share one window geometry (one message per window carries all of them)."""

    track: int
    window_s: float
    """Duration of a full window (``span / sample_rate``)."""
    hop_s: float
    adapters: list[StreamAdapter]


class StreamLimits(BaseModel):
    """The server's ``stream_*`` settings, as the session is held to them."""

    max_seconds: float
    idle_timeout_s: float
    max_ahead_s: float
    max_frame_bytes: int
    max_pending_windows: int
    max_unsent: int
    max_unsent_bytes: int | None = None
    max_sample_rate: int | None = None


class StreamReady(BaseModel):
    type: Literal["ready"] = "ready"
    session: str
    sample_rate: int
    format: str
    channels: int
    follow: bool
    tracks: list[StreamTrack]
    limits: StreamLimits


class StreamLabel(BaseModel):
    label: str
    score: float


class StreamResult(BaseModel):
    adapter: str
    version: int
    """The version that served this window."""
    labels: list[StreamLabel]


class StreamWindow(BaseModel):
    type: Literal["window"] = "window"
    track: int
    index: int
    """Window number within its track, from 0."""
    start_s: float
    end_s: float
    results: list[StreamResult]
    lag_s: float
    """Server side: the arrival of the window's last sample -> this message sent."""


class StreamDropped(BaseModel):
    type: Literal["dropped"] = "dropped"
    track: int
    index: int
    start_s: float
    end_s: float
    reason: Literal["overloaded", "queue_full", "timeout", "not_ready", "failed"]
    """``overloaded``: ``stream_max_pending_windows`` of this session were still in the engine;
    the others: the engine refused or failed the window (as /classify would answer 429, 504,
    503, 500)."""
    message: str


class StreamEnd(BaseModel):
    type: Literal["end"] = "end"
    windows: int
    dropped: int
    seconds: float
    """Audio received, seconds."""


class StreamError(BaseModel):
    type: Literal["error"] = "error"
    code: int
    """The close code that follows (:class:`CloseCode`; sent before every close but 1000 and
    1001)."""
    reason: str
    """A slug (``ahead_of_real_time``, ``idle``, ...), also the close frame's reason."""
    message: str
    """What happened and what to change."""


# -- window arithmetic ------------------------------------------------------------------------
def bytes_per_frame(fmt: str, channels: int) -> int:
    """Bytes of one interleaved sample frame."""
    return FORMATS[fmt] * channels


def window_span(target_frames: int, rate: int) -> int:
    """Samples at ``rate`` that make exactly ``target_frames`` fbank frames (25 ms analysis
    window, 10 ms shift): ``ceil(((frames - 1) * 10 + 25) ms * rate)``."""
    return -(-((target_frames - 1) * _FRAME_SHIFT_MS + _FRAME_LENGTH_MS) * rate // 1000)


def window_start(index: int, hop_frames: int, rate: int) -> int:
    """First sample of window ``index`` at ``rate`` (hop in 10 ms frames), exact integers."""
    return index * hop_frames * rate // (1000 // _FRAME_SHIFT_MS)


def full_windows(samples: int, target_frames: int, hop_frames: int, rate: int) -> int:
    """Full windows a stream of ``samples`` samples holds."""
    span = window_span(target_frames, rate)
    if samples < span:
        return 0
    # solved, then corrected for the integer rounding of the starts (a step or two at most)
    count = max(0, (samples - span) * 100 // (hop_frames * rate) + 1)
    while count > 0 and window_start(count - 1, hop_frames, rate) + span > samples:
        count -= 1
    while window_start(count, hop_frames, rate) + span <= samples:
        count += 1
    return count


def tail_window(
    samples: int, target_frames: int, hop_frames: int, rate: int
) -> tuple[int, int] | None:
    """``(start, stop)`` of the tail window cut at ``end``, or None: the audio after the last
    full window, when there is any and it holds at least one 25 ms analysis window."""
    span = window_span(target_frames, rate)
    count = full_windows(samples, target_frames, hop_frames, rate)
    covered = window_start(count - 1, hop_frames, rate) + span if count else 0
    start = window_start(count, hop_frames, rate)
    if samples <= covered or samples - start < -(-_FRAME_LENGTH_MS * rate // 1000):
        return None
    return start, samples
