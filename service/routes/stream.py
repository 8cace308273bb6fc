"""``GET /stream``: live classification over a WebSocket (docs/streaming.md,
:mod:`lookaside.stream_protocol`).

The connection is always accepted first, so a refusal reaches the client as a
:class:`~lookaside.stream_protocol.StreamError` and a close code it can read (a WebSocket
refused during the handshake only shows the client an HTTP 403). Order: accept -> ready? (4503)
-> a session slot (4429) -> the opening message within ``stream_open_timeout_s`` (4408; 1009
over ``stream_max_frame_bytes``; 4400 if malformed) -> resolve the adapters (4404, 4415, 4503,
1011), all by one deadline: ``stream_open_timeout_s + request_timeout_s`` after the accept, so an
opening holds its slot no longer -> ``ready`` -> the session (:mod:`service.stream.session`).
One INFO line per session when it closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping

from fastapi import APIRouter, WebSocket

from lookaside.stream_protocol import CloseCode, StreamOpen
from service.deps import AppState
from service.stream.closing import close_socket, disconnect_close, frame_too_big
from service.stream.live import LiveSessions, Slot
from service.stream.opening import opening_text, parse_open, ready_message, resolve_tracks
from service.stream.session import Session
from service.stream.tracks import Track
from service.stream.windows import StreamClose, WindowContext

router = APIRouter(tags=["stream"])
log = logging.getLogger("service.stream")

SESSIONS_KEY = "stream_sessions"
"""``AppState.extra`` key of the app's :class:`~service.stream.live.LiveSessions`."""


def live_sessions(state: AppState) -> LiveSessions:
    """The app's live sessions (made on first use)."""
    live = state.extra.get(SESSIONS_KEY)
    if not isinstance(live, LiveSessions):
        live = state.extra[SESSIONS_KEY] = LiveSessions(
            state.settings.stream_max_sessions, state.metrics
        )
    return live


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """One live session (protocol: :mod:`lookaside.stream_protocol`)."""
    state = websocket.app.state.lookaside
    assert isinstance(state, AppState)
    live = live_sessions(state)
    session_id = uuid.uuid4().hex[:12]
    await websocket.accept()
    slot = None
    close = StreamClose(CloseCode.INTERNAL, "internal", "server error")
    try:
        if state.shutting_down or live.closing:
            close = _going_away()
        elif not state.ready or state.engine is None or state.registry is None:
            close = StreamClose(
                CloseCode.NOT_READY,
                "not_ready",
                f"the server is not ready yet ({state.reason}); retry shortly",
            )
        elif (slot := live.take()) is None:
            close = StreamClose(
                CloseCode.TOO_MANY_SESSIONS,
                "too_many_sessions",
                f"{live.cap} sessions are live (stream_max_sessions); retry later or on "
                "another replica",
            )
        else:
            close = await _serve(websocket, state, slot, session_id)
            return
        await close_socket(websocket, close)
        log.info("stream session %s refused: %d (%s)", session_id, close.code, close.reason)
    finally:
        if slot is not None:
            slot.release()
        label = str(close.code)
        if close.reason == "disconnected":
            label = "1001" if live.closing else "client"
        state.metrics.safe(lambda: state.metrics.stream_closed.labels(code=label).inc())


async def _serve(websocket: WebSocket, state: AppState, slot: Slot, session_id: str) -> StreamClose:
    """Opening -> session -> close; every wait bounded, every path closes."""
    stop = asyncio.Event()
    slot.stop = stop.set
    opener = asyncio.create_task(_open(websocket, state))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({opener, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (opener, stopped):
            task.cancel()
        await asyncio.gather(opener, stopped, return_exceptions=True)
    if not opener.done() or opener.cancelled() or stop.is_set():
        close = _going_away()
    elif isinstance(exc := opener.exception(), StreamClose):
        close = exc
    elif exc is not None:
        raise exc
    else:
        opening, tracks = opener.result()
        return await _run_session(websocket, state, slot, session_id, opening, tracks)
    await close_socket(websocket, close)
    log.info("stream session %s refused: %d (%s)", session_id, close.code, close.reason)
    return close


async def _open(websocket: WebSocket, state: AppState) -> tuple[StreamOpen, list[Track]]:
    settings = state.settings
    wait = settings.stream_open_timeout_s
    deadline = time.monotonic() + wait + settings.request_timeout_s
    try:
        async with asyncio.timeout(wait):
            message = await websocket.receive()
    except TimeoutError:
        raise StreamClose(
            CloseCode.IDLE, "idle", f"no opening message within {wait:g} s (stream_open_timeout_s)"
        ) from None
    if message["type"] == "websocket.disconnect":
        raise disconnect_close(message)
    size = _frame_size(message)
    if size > settings.stream_max_frame_bytes:
        raise frame_too_big(size, settings.stream_max_frame_bytes)
    opening = parse_open(opening_text(message), settings)
    assert state.registry is not None
    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            return opening, await resolve_tracks(opening, state.registry, settings, deadline)
    except TimeoutError:
        raise StreamClose(
            CloseCode.NOT_READY,
            "not_ready",
            f"the adapters could not be resolved within {settings.request_timeout_s:g} s "
            "(request_timeout_s); retry shortly",
        ) from None


def _frame_size(message: Mapping[str, object]) -> int:
    """Bytes of a received message (a text's UTF-8 length; counted only when not ASCII)."""
    data = message.get("bytes")
    if isinstance(data, bytes):
        return len(data)
    text = message.get("text")
    if not isinstance(text, str):
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic`` deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + deadline - time.monotonic()


async def _run_session(
    websocket: WebSocket,
    state: AppState,
    slot: Slot,
    session_id: str,
    opening: StreamOpen,
    tracks: list[Track],
) -> StreamClose:
    settings = state.settings
    assert state.engine is not None
    assert state.registry is not None
    ctx = WindowContext(
        session=session_id,
        engine=state.engine,
        registry=state.registry,
        pool=state.featurize_pool,
        metrics=state.metrics,
        timeout_s=settings.request_timeout_s,
        top_k=opening.top_k,
    )
    session = Session(websocket, opening, tracks, ctx, settings)
    slot.stop = session.stop_for_shutdown
    close = await session.run(ready_message(session_id, opening, tracks, settings))
    log.info("%s", session.summary(close))
    return close


def _going_away() -> StreamClose:
    return StreamClose(
        CloseCode.GOING_AWAY, "shutting_down", "the server is shutting down; reconnect shortly"
    )
