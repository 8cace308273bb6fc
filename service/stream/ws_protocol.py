"""The WebSocket protocol uvicorn runs for ``/stream``: its sans-I/O ``websockets`` one, closing
with 1001 (going away) at shutdown instead of 1012.

uvicorn closes every open WebSocket itself when it shuts down, before the app's lifespan exit
runs, with 1012 (service restart). The stream protocol promises 1001 (``CloseCode.GOING_AWAY``:
reconnect, to another replica if there is one), so this subclass sends that code and reason
``shutting_down``; everything else is uvicorn's. The app learns of it as a
``websocket.disconnect`` message with code 1001 and :data:`SHUTDOWN_KEY` set (a key no client
can set), so the session counts the close as the server's 1001, not as the client leaving: under
uvicorn this runs before the lifespan's exit, so the app's own close-all finds these sessions
already ended. The sans-I/O implementation is used because
uvicorn's other ``websockets`` one is built on ``websockets.legacy``, deprecated since
websockets 14. It stops reading after each message until the app has taken it, so at most one
message (``ws_max_size``) waits per connection.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["SHUTDOWN_KEY", "GoingAwayWebSockets"]

SHUTDOWN_KEY = "lookaside_shutdown"
"""Set (True) in the ``websocket.disconnect`` message of a connection closed by the shutdown."""


class GoingAwayWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; shutdown closes with 1001."""

    def shutdown(self) -> None:
        if self.close_sent or not (self.handshake_complete and self.initial_response is None):
            super().shutdown()
            return
        self.stop_keepalive()
        gone: Any = {"type": "websocket.disconnect", "code": 1001, SHUTDOWN_KEY: True}
        self.queue.put_nowait(gone)  # an ASGI message with one key of ours
        self.conn.send_close(1001, "shutting_down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
