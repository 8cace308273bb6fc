"""How a ``/stream`` session ends on the wire: the error message and close frame it sends
(bounded), and the closes the receiving side turns into :class:`StreamClose` (the client or the
shutdown closing the connection, a frame over the size limit).

Threads: event loop only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from starlette.websockets import WebSocket

from lookaside.stream_protocol import CloseCode, StreamError
from service.stream.windows import StreamClose
from service.stream.ws_protocol import SHUTDOWN_KEY

__all__ = ["SEND_TIMEOUT_S", "close_socket", "disconnect_close", "frame_too_big"]

log = logging.getLogger("service.stream")

SEND_TIMEOUT_S = 2.0
"""Longest wait for the last messages (the error, the close) of a session that is ending."""


async def close_socket(ws: WebSocket, close: StreamClose) -> None:
    """Send the error message (every code but 1000 and 1001: the 44xx limits, 1009 and 1011
    too, so the client reads what happened) and the close frame, each bounded; nothing once the
    connection is gone."""
    if close.reason == "disconnected" or close.gone:
        return
    try:
        if close.code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
            error = StreamError(code=close.code, reason=close.reason, message=close.message)
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await ws.send_text(error.model_dump_json())
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await ws.close(close.code, close.reason[:120])
    except Exception:  # gone or not reading: uvicorn closes the transport when the route returns
        log.debug("closing message not sent (%d %s)", close.code, close.reason)


def disconnect_close(message: Mapping[str, object]) -> StreamClose:
    """A ``websocket.disconnect`` message -> how the session ended: the server's 1001 when the
    shutdown closed the connection (:data:`~service.stream.ws_protocol.SHUTDOWN_KEY`), else the
    client left."""
    if message.get(SHUTDOWN_KEY):
        return StreamClose(
            CloseCode.GOING_AWAY, "shutting_down", "the server is shutting down", gone=True
        )
    code = message.get("code")
    return StreamClose(code if isinstance(code, int) else 1005, "disconnected", "")


def frame_too_big(size: int, limit: int) -> StreamClose:
    return StreamClose(
        CloseCode.TOO_BIG,
        "frame_too_big",
        f"a frame of {size} bytes is over this server's limit of {limit} bytes "
        "(stream_max_frame_bytes); send smaller frames",
    )
