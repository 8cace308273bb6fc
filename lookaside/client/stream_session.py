"""One ``GET /stream`` session, blocking (``websockets.sync``): a sender thread paces the
source's audio onto the WebSocket while the caller iterates over what the server answers.

The messages are :mod:`lookaside.stream_protocol`'s models: :class:`StreamReady` first, then a
:class:`StreamWindow` or :class:`StreamDropped` per window, and :class:`StreamEnd` last (after the
source ends or :meth:`StreamSession.stop`, the sender sends ``{"type": "end"}``). A session the
server closes with an error raises :class:`StreamClosed` with its close code and message. Every
wait is bounded: the opening handshake (``open_timeout``), each message and each send of audio
(``timeout`` beyond what the audio itself needs) and the closing (``close_timeout``), also
against a server that stops reading (:meth:`StreamSession._close_ws`).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType

from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from lookaside.client._core import adapter_refs
from lookaside.client.errors import ClientError, ConnectionFailed, InvalidResponse
from lookaside.client.stream_sources import AudioSource, Pacer, chunk_frames, f32le
from lookaside.stream_protocol import (
    CloseCode,
    StreamDropped,
    StreamEnd,
    StreamError,
    StreamOpen,
    StreamReady,
    StreamWindow,
)

__all__ = ["StreamClosed", "StreamMessage", "StreamSession", "stream", "ws_url"]

StreamMessage = StreamReady | StreamWindow | StreamDropped | StreamEnd
"""What iterating over a session gives."""

DEFAULT_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest message read from the server (a window of 16 adapters x 1000 labels is ~1 MB)."""
AHEAD_MARGIN_S = 0.5
"""How far under the server's ``max_ahead_s`` an unpaced (``realtime=False``) sender stays."""
_END = json.dumps({"type": "end"})
_MESSAGES: dict[str, type[StreamMessage] | type[StreamError]] = {
    "ready": StreamReady,
    "window": StreamWindow,
    "dropped": StreamDropped,
    "end": StreamEnd,
    "error": StreamError,
}
_CLOSES = {
    CloseCode.GOING_AWAY: "the server is shutting down; reconnect (to another replica if any)",
    CloseCode.TOO_BIG: "a frame of audio was over the server's stream_max_frame_bytes",
    CloseCode.INTERNAL: "the server failed (its log has the trace)",
    1006: "the connection dropped without a closing handshake",
}


class StreamClosed(ClientError):
    """The server closed the session with an error (a :class:`~lookaside.stream_protocol.
    CloseCode`: 4404 unknown adapter, 4430 ahead of real time, ...), or this client closed it
    over a limit of its own (1009: a message over ``max_message_bytes``).

    Attributes:
        code: the close code.
        reason: the server's slug (``not_found``, ``idle``, ...) or the close frame's reason.
        message: what happened and what to change (the server's own sentence where it sent one).
        by: ``"server"`` or ``"client"``: which side closed first.
    """

    def __init__(self, code: int, reason: str, message: str, *, by: str = "server") -> None:
        name = next((c.name.lower() for c in CloseCode if c == code), "unknown")
        super().__init__(f"the {by} closed the stream with {code} ({reason or name}): {message}")
        self.code, self.reason, self.message, self.by = code, reason, message, by


def ws_url(url: str) -> str:
    """The session's WebSocket URL for a server's base URL: ``http`` -> ``ws``, ``https`` ->
    ``wss``, ``/stream`` appended unless already there."""
    base = url.strip().rstrip("/")
    scheme, sep, rest = base.partition("://")
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if not sep or scheme.lower() not in schemes:
        raise ClientError(
            f"the server URL must start with http://, https://, ws:// or wss://: {url}"
        )
    path = rest if rest.endswith("/stream") else rest + "/stream"
    return f"{schemes[scheme.lower()]}://{path}"


class StreamSession:
    """A live session: iterate over it for the server's messages; :meth:`stop` ends the audio
    early (the sender sends ``end``; iteration goes on to :class:`StreamEnd`); leaving the
    ``with`` block (or :meth:`close`) closes the connection. The session closes ``source``.

    Args: as :func:`stream`.
    """

    def __init__(
        self,
        url: str,
        source: AudioSource,
        adapters: str | Sequence[str],
        *,
        hop_s: float | None = None,
        follow: bool = False,
        top_k: int = 5,
        realtime: bool = True,
        chunk_s: float = 0.1,
        timeout: float = DEFAULT_TIMEOUT_S,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        limits = (("timeout", timeout), ("open_timeout", open_timeout), ("chunk_s", chunk_s))
        for name, value in limits:
            if not (math.isfinite(value) and value > 0):
                raise ClientError(f"{name} must be a positive number of seconds, got {value}")
        try:
            self.opening = StreamOpen(
                adapters=adapter_refs(adapters).split(","),
                sample_rate=source.sample_rate,
                format="f32",
                channels=source.channels,
                hop_s=hop_s,
                follow=follow,
                top_k=top_k,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise ClientError(f"cannot open a stream: {where}: {first['msg']}") from None
        self.url, self.source = ws_url(url), source
        self.realtime, self.chunk_s, self.timeout = realtime, chunk_s, timeout
        self._open_timeout, self._close_timeout = open_timeout, close_timeout
        self._max_message_bytes = max_message_bytes
        self.ready: StreamReady | None = None
        self.end: StreamEnd | None = None
        self._ws: ClientConnection | None = None
        self._stopping = threading.Event()
        self._sender: threading.Thread | None = None
        self._sender_error: BaseException | None = None
        self._ready_given = self._done = False
        self._source_lock = threading.Lock()
        self._source_closed = False
        self._wait = timeout
        self._sending_since: float | None = None  # monotonic start of the send in progress

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> StreamSession:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self._abort()  # quit now: no closing handshake behind a send that may be blocked
        self.close()

    def open(self) -> StreamReady:
        """Connect, send the opening message, wait for :class:`StreamReady`, start sending."""
        if self.ready is not None:
            return self.ready
        try:
            connection = connect(
                self.url,
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                max_size=self._max_message_bytes,
                compression=None,  # audio does not deflate; the server need not inflate it
            )
            # entered as its context manager (websockets 17.1 deprecates a bare connect());
            # close() closes it
            self._ws = connection.__enter__()
        except InvalidStatus as exc:
            status = exc.response.status_code
            self.close()
            raise ConnectionFailed(
                f"{self.url}: the server answered HTTP {status} instead of a WebSocket (a "
                "server without GET /stream, or a proxy in the way)"
            ) from None
        except (OSError, TimeoutError, InvalidURI, WebSocketException) as exc:
            self.close()
            raise ConnectionFailed(
                f"could not reach {self.url}: {exc or type(exc).__name__}"
            ) from None
        with contextlib.suppress(ConnectionClosed):  # refused at once: the error is queued
            self._ws.send(self.opening.model_dump_json(exclude_none=True))
        first = self._receive(self._open_timeout + self.timeout)
        if not isinstance(first, StreamReady):
            self.close()
            raise InvalidResponse(f"{self.url} answered the opening with {first.type!r}, not ready")
        self.ready = first
        self._wait = self.timeout + max((t.window_s + t.hop_s for t in first.tracks), default=0.0)
        self._sender = threading.Thread(
            target=self._send_audio, name="lookaside-stream", daemon=True
        )
        self._sender.start()
        return first

    def stop(self) -> None:
        """End the audio now (safe from a signal handler or another thread): the sender sends
        ``end``; the server answers the windows pending and :class:`StreamEnd`."""
        self._stopping.set()

    def close(self) -> None:
        """Close the connection and the source; bounded in every state (about twice
        ``close_timeout`` at most: the lock, then the closing handshake)."""
        self._stopping.set()
        self._done = True
        if self._ws is not None:
            self._close_ws(self._ws)
        if self._sender is not None and self._sender is not threading.current_thread():
            self._sender.join(self._close_timeout + 1.0)
        if self._sender is None or not self._sender.is_alive():
            self._close_source()

    def _close_ws(
        self, ws: ClientConnection, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """``websockets.sync`` sends under the connection's lock with a blocking ``sendall``
        and no timeout, so a send to a server that stopped reading (TCP window shut) holds the
        lock ``ws.close()`` waits for, for ever: past ``close_timeout`` the socket is shut down
        (and the receiving side ends a session whose send is blocked past its bound)."""
        timer = threading.Timer(self._close_timeout, self._abort)
        timer.daemon = True
        timer.start()
        try:
            ws.close(code, reason)
        finally:
            timer.cancel()

    def _abort(self) -> None:
        """Shut the socket down: a blocked ``sendall`` fails at once, freeing the lock."""
        if self._ws is not None:
            with contextlib.suppress(OSError):
                self._ws.socket.shutdown(socket.SHUT_RDWR)

    def _close_source(self) -> None:
        with self._source_lock:  # the caller's close and the sender's end may both get here
            if not self._source_closed:
                self._source_closed = True
                self.source.close()

    # -- receiving ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamMessage]:
        return self

    def __next__(self) -> StreamMessage:
        if not self._ready_given:
            self._ready_given = True
            return self.open()
        if self._done:
            raise StopIteration
        message = self._receive(self._message_wait())
        if isinstance(message, StreamEnd):
            self.end = message
            self.close()
        return message

    def _message_wait(self) -> float:
        """``_wait``, less the time a send has been blocked (a send's bound is ``_wait`` too)."""
        since = self._sending_since
        if since is None:
            return self._wait
        left = since + self._wait - time.monotonic()
        if left <= 0:
            raise self._failed(self._stalled(since))
        return left

    def _stalled(self, since: float) -> str:
        waited = f"{time.monotonic() - since:.1f} s to be sent (bound: {self._wait:g} s)"
        return f"{self.url}: the server stopped reading the audio: a frame waited {waited}"

    def _failed(self, why: str) -> ConnectionFailed:
        """Close (at once when the sender is blocked in a send) and say ``why``."""
        if self._sending_since is not None:
            self._abort()
        self.close()
        return ConnectionFailed(why)

    def _receive(self, wait: float) -> StreamMessage:
        """The next message; a :class:`StreamError` (and the close after it) raised."""
        assert self._ws is not None
        try:
            data = self._ws.recv(timeout=wait)
        except TimeoutError:
            since = self._sending_since
            if since is not None and time.monotonic() - since >= self._wait - 0.01:
                raise self._failed(self._stalled(since)) from None
            raise self._failed(f"{self.url}: no message from the server in {wait:g} s") from None
        except ConnectionClosed as exc:
            self.close()
            if self._sender_error is not None:
                raise self._sender_error from None
            raise self._closed(exc) from None
        message = self._parse(data)
        if isinstance(message, StreamError):
            self.close()
            raise StreamClosed(message.code, message.reason, message.message)
        return message

    def _closed(self, exc: ConnectionClosed) -> StreamClosed:
        """Which side closed first says whose limit a 1009 was: one this client sent is its
        own ``max_message_bytes``; one it received, the server's ``stream_max_frame_bytes``."""
        sent, rcvd = exc.sent, exc.rcvd
        if sent is not None and (rcvd is None or exc.rcvd_then_sent is False):
            if sent.code == CloseCode.TOO_BIG:
                why = (
                    f"a message from the server was over this client's max_message_bytes "
                    f"({self._max_message_bytes} bytes); raise max_message_bytes (a window's "
                    "message grows with its adapters x top_k)"
                )
            else:
                why = f"the client failed the connection: {sent.reason or 'no reason given'}"
            return StreamClosed(sent.code, sent.reason, why, by="client")
        code = rcvd.code if rcvd is not None else 1006
        reason = rcvd.reason if rcvd is not None else ""
        why = _CLOSES.get(code, "the server closed the session before its end message")
        return StreamClosed(code, reason, why)

    def _parse(self, data: str | bytes) -> StreamMessage | StreamError:
        if isinstance(data, bytes):
            self.close()
            raise InvalidResponse(f"{self.url} sent a binary message; the protocol has none")
        try:
            raw = json.loads(data)
            model = _MESSAGES[raw["type"]]
            return model.model_validate(raw)
        except (ValueError, KeyError, TypeError, RecursionError, ValidationError) as exc:
            self.close()
            raise InvalidResponse(
                f"{self.url} sent a message that is not the protocol's: {data[:200]!r} "
                f"({type(exc).__name__})"
            ) from None

    # -- sending (the sender thread) ------------------------------------------------------------
    def _send_audio(self) -> None:
        """Send the source's blocks, paced, then ``end``; a failure of the source is kept for
        the receiving side to raise, and closes the connection."""
        ws, ready, source = self._ws, self.ready, self.source
        assert ws is not None
        assert ready is not None
        try:
            frames = chunk_frames(
                source.sample_rate, self.chunk_s, source.channels, ready.limits.max_frame_bytes
            )
            ahead = 0.0
            if not self.realtime:
                ahead = ready.limits.max_ahead_s - AHEAD_MARGIN_S - 2 * frames / source.sample_rate
            pacer = Pacer(source.sample_rate, ahead)
            sent = 0
            for block in source.blocks(frames):
                if self._stopping.is_set():
                    break
                if not source.live and self._stopping.wait(pacer.delay(sent + len(block))):
                    break
                self._send(ws, f32le(block))
                sent += len(block)
            self._send(ws, _END)
        except ConnectionClosed:
            return  # the receiving side reports why
        except Exception as exc:  # a thread boundary: the caller's thread raises it
            self._sender_error = exc
            self._close_ws(ws, CloseCode.NORMAL, "the client's audio source failed")
        finally:
            if self._done:
                self._close_source()

    def _send(self, ws: ClientConnection, data: str | bytes) -> None:
        """``ws.send``, timed: the receiving side ends a session whose send blocks too long."""
        self._sending_since = time.monotonic()
        try:
            ws.send(data)
        finally:
            self._sending_since = None


def stream(
    url: str,
    source: AudioSource,
    adapters: str | Sequence[str],
    *,
    hop_s: float | None = None,
    follow: bool = False,
    top_k: int = 5,
    realtime: bool = True,
    chunk_s: float = 0.1,
    timeout: float = DEFAULT_TIMEOUT_S,
    open_timeout: float = 10.0,
    close_timeout: float = 5.0,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> StreamSession:
    """Stream ``source`` to the server at ``url`` for ``adapters``; iterate over the result
    for :class:`StreamReady`, then a :class:`StreamWindow` or :class:`StreamDropped` per window,
    then :class:`StreamEnd` (the connection closes after it, or when a ``with`` block is left).

    Args:
        url: the server's base URL (``http://host:8000``; ``https`` becomes ``wss``).
        source: :class:`~lookaside.client.stream_sources.ArraySource`, ``file_source(path)`` or
            ``open_device(...)``; sent as ``f32`` at its own rate and channel count.
        adapters: ``name``, ``name@version`` or a list of them.
        hop_s: seconds between window starts (None: each adapter's own hop).
        follow: each window served by the version active when it is cut (else pinned at open).
        top_k: labels per adapter per window.
        realtime: send each block when its audio would have been recorded; False: as fast as
            the server's ``max_ahead_s`` allows (less ``AHEAD_MARGIN_S``). A device is never
            paced (it is real time itself).
        chunk_s: seconds of audio per binary frame (capped at the server's frame limit).
        timeout: seconds to wait for a message, or for a send of audio to go through,
            beyond a full window and hop of audio.
        open_timeout, close_timeout: bounds of the opening and closing handshakes.
        max_message_bytes: largest message read from the server (over it: 1009, by the
            client).

    Raises:
        StreamClosed: the server closed the session with an error (code, reason, message), or
            the client closed it with 1009 over ``max_message_bytes`` (``by="client"``).
        ConnectionFailed: no server, a handshake refused, no message within the timeout, or a
            server that stopped reading the audio (a send blocked as long).
        InvalidResponse: a message that is not the protocol's.
        ClientError: bad arguments (the opening message's own checks).
    """
    return StreamSession(
        url,
        source,
        adapters,
        hop_s=hop_s,
        follow=follow,
        top_k=top_k,
        realtime=realtime,
        chunk_s=chunk_s,
        timeout=timeout,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        max_message_bytes=max_message_bytes,
    )
