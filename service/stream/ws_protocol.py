"""The WebSocket protocol uvicorn runs for ``/stream``: its sans-I/O ``websockets`` one, closing
with 1001 (going away) at shutdown instead of 1012.

uvicorn closes every open WebSocket itself when it shuts down, before the app's lifespan exit
runs, with 1012 (service restart). The stream protocol promises 1001 (``CloseCode.GOING_AWAY``:
reconnect, to another replica if there is one), so this subclass sends that code and reason
``shutting_down``; everything else is uvicorn's. The sans-I/O implementation is used because
uvicorn's other ``websockets`` one is built on ``websockets.legacy``, deprecated since
websockets 14. It stops reading after each message until the app has taken it, so at most one
message (``ws_max_size``) waits per connection.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["GoingAwayWebSockets"]


class GoingAwayWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; shutdown closes with 1001."""

    def shutdown(self) -> None:
        if self.close_sent or not (self.handshake_complete and self.initial_response is None):
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
        self.conn.send_close(1001, "shutting_down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
