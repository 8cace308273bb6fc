"""One ``/stream`` session after its opening: receive audio, cut windows, answer them in order.

Three kinds of coroutine per session, all on the event loop:

- the **receiver** reads frames (each wait bounded by ``stream_idle_timeout_s``, and by the
  moment the session would fall more than that behind real time), checks them (at most
  ``stream_max_frame_bytes``, checked here too since only uvicorn's own ``ws_max_size`` enforces
  it in the WebSocket layer; not empty; whole sample frames; finite floats; not ahead of real
  time; not over the session length; text: only a short ``end``),
  downmixes them as ``/classify``'s decoder does, appends them to the ring and cuts every window
  they complete;
- one **window task** per window in flight (at most ``stream_max_pending_windows``; a window cut
  beyond that is answered ``dropped: overloaded`` at once):
  :func:`service.stream.windows.answer_window`;
- the **sender** sends the answers in cut order per track (:mod:`service.stream.outbox`), each
  send bounded.

The session owns its ring and records; the featurize pool computes the features and the engine
worker runs the rows (:mod:`service.stream.windows`). Whatever ends the session (``end``, a
limit, the client leaving, shutdown) goes through :meth:`Session.finish`; :meth:`Session.run`
then cancels every task (their ``finally`` releases the leases and cancels queued jobs) and
closes the socket, bounded.

Memory per session: the ring (the longest window span plus the largest frame, in samples), the
samples and features of at most ``stream_max_pending_windows`` windows, at most
``stream_max_unsent_bytes`` of sendable messages and the small records queued behind a pending
window (:mod:`service.stream.outbox`; docs/streaming.md has the worst case).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel
from starlette.websockets import WebSocket

from lookaside.decode_sink import downmix
from lookaside.stream_protocol import (
    CloseCode,
    StreamDropped,
    StreamEnd,
    StreamOpen,
    StreamReady,
    StreamWindow,
    bytes_per_frame,
)
from service.settings import ServiceSettings
from service.stream.closing import SEND_TIMEOUT_S, close_socket, disconnect_close, frame_too_big
from service.stream.outbox import Outbox, Record
from service.stream.ring import SampleRing
from service.stream.tracks import Cut, Track
from service.stream.windows import StreamClose, WindowContext, answer_window

__all__ = ["Session"]

log = logging.getLogger("service.stream")

_LAGS_KEPT = 4096
"""Lags kept for the close log's p50 (the most recent ones)."""
MAX_TEXT_CHARS = 64
"""Longest text frame after the opening (``{"type": "end"}`` is 15): refused before parsing."""


@dataclass
class _Counts:
    windows: int = 0
    dropped: int = 0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=_LAGS_KEPT))


class Session:
    """One session, from its ready message to its close."""

    def __init__(
        self,
        websocket: WebSocket,
        opening: StreamOpen,
        tracks: list[Track],
        ctx: WindowContext,
        settings: ServiceSettings,
    ) -> None:
        self.ws = websocket
        self.opening = opening
        self.tracks = tracks
        self.ctx = ctx
        self.settings = settings
        self.rate = opening.sample_rate
        self.frame_bytes = bytes_per_frame(opening.format, opening.channels)
        largest_frame = settings.stream_max_frame_bytes // self.frame_bytes
        self.ring = SampleRing(max(t.span for t in tracks) + largest_frame)
        self.outbox = Outbox(tracks, settings)
        self.pending = 0
        self.counts = _Counts()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.ended = False
        self.first_audio: float | None = None
        self.overdue: asyncio.TimerHandle | None = None
        """After ``end``: closes the session if its last windows are not answered in time."""
        self.closing: asyncio.Future[StreamClose] = asyncio.get_running_loop().create_future()

    @property
    def seconds(self) -> float:
        """Audio received, seconds."""
        return self.ring.end / self.rate

    def finish(self, close: StreamClose) -> None:
        """End the session with ``close`` (the first call wins)."""
        if not self.closing.done():
            self.closing.set_result(close)
            self.wake.set()  # a sender waiting for work sees the session is over

    def stop_for_shutdown(self) -> None:
        self.finish(
            StreamClose(CloseCode.GOING_AWAY, "shutting_down", "the server is shutting down")
        )

    async def run(self, ready: StreamReady) -> StreamClose:
        """Send ``ready``, serve until :meth:`finish`, then cancel everything and close.
        Returns how it ended."""
        try:
            await self._send(ready)
        except StreamClose as refused:
            return refused
        receiver = asyncio.create_task(self._guard(self._receive_loop()))
        sender = asyncio.create_task(self._guard(self._send_loop()))
        try:
            close = await self.closing
        finally:
            if self.overdue is not None:
                self.overdue.cancel()
            await _cancel_all([receiver, sender, *self.tasks])
        await close_socket(self.ws, close)
        return close

    async def _guard(self, work: Coroutine[object, object, None]) -> None:
        """Run a session coroutine; a bug ends the session with 1011 (logged), never silently."""
        try:
            await work
        except StreamClose as close:
            self.finish(close)
        except Exception:
            log.exception("stream session %s failed", self.ctx.session)
            self.finish(StreamClose(CloseCode.INTERNAL, "internal", "server error"))

    # -- receiving --------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        idle = self.settings.stream_idle_timeout_s
        while not self.closing.done():
            wait: float | None = None if self.ended else idle
            starving = False
            if wait is not None and self.first_audio is not None:
                # falls more than ``idle`` behind real time then (a trickle of audio)
                behind = self.first_audio + self.seconds + idle - time.monotonic()
                starving = behind < idle
                wait = max(min(wait, behind), 0.0)
            try:
                async with asyncio.timeout(wait):
                    message = await self.ws.receive()
            except TimeoutError:
                if starving:
                    raise self._starved(time.monotonic()) from None
                raise StreamClose(
                    CloseCode.IDLE,
                    "idle",
                    f"no frame for {idle:g} s (stream_idle_timeout_s); send audio or "
                    '{"type": "end"}',
                ) from None
            if message["type"] == "websocket.disconnect":
                raise disconnect_close(message)
            data = message.get("bytes")
            if data is not None:
                self._on_audio(data, time.monotonic())
            else:
                self._on_text(message.get("text") or "")

    def _starved(self, now: float) -> StreamClose:
        assert self.first_audio is not None
        wall = now - self.first_audio
        return StreamClose(
            CloseCode.IDLE,
            "starved",
            f"{self.seconds:.2f} s of audio arrived in {wall:.2f} s, more than "
            f"{self.settings.stream_idle_timeout_s:g} s (stream_idle_timeout_s) behind real "
            "time; send audio at its real rate",
        )

    def _on_text(self, text: str) -> None:
        if self.ended or len(text) > MAX_TEXT_CHARS or not _is_end(text):
            raise StreamClose(
                CloseCode.BAD_REQUEST,
                "bad_message",
                "after the opening message the only text frame accepted is "
                '{"type": "end"} (once); audio goes in binary frames',
            )
        self.ended = True
        now = time.monotonic()
        for track in self.tracks:
            for cut in track.cut(self.ring.end):
                self._enqueue(track, cut, now)
            tail = track.tail(self.ring.end)
            if tail is not None:
                self._enqueue(track, tail, now)
        loop = asyncio.get_running_loop()
        self.overdue = loop.call_later(
            self.settings.request_timeout_s + SEND_TIMEOUT_S, self._end_overdue
        )
        self.wake.set()

    def _end_overdue(self) -> None:
        self.finish(
            StreamClose(
                CloseCode.INTERNAL, "end_timeout", "the last windows were not answered in time"
            )
        )

    def _on_audio(self, data: bytes, arrived: float) -> None:
        if len(data) > self.settings.stream_max_frame_bytes:
            raise frame_too_big(len(data), self.settings.stream_max_frame_bytes)
        if self.ended:
            raise StreamClose(CloseCode.BAD_REQUEST, "after_end", "audio sent after end")
        if not data:
            raise StreamClose(
                CloseCode.BAD_REQUEST,
                "empty_frame",
                'an empty binary frame; send audio (at least one sample frame) or {"type": "end"}',
            )
        samples = self._decode(data)
        n = int(samples.shape[0])
        if self.first_audio is None:
            self.first_audio = arrived
        elif arrived - self.first_audio - self.seconds > self.settings.stream_idle_timeout_s:
            raise self._starved(arrived)
        total_s = (self.ring.end + n) / self.rate
        ahead = total_s - (arrived - self.first_audio)
        if ahead > self.settings.stream_max_ahead_s:
            raise StreamClose(
                CloseCode.AHEAD_OF_REAL_TIME,
                "ahead_of_real_time",
                f"{total_s:.2f} s of audio arrived in {arrived - self.first_audio:.2f} s, "
                f"{ahead:.2f} s ahead of real time (stream_max_ahead_s = "
                f"{self.settings.stream_max_ahead_s:g}); send audio at its real rate, or POST "
                "/classify for recorded files",
            )
        if total_s > self.settings.stream_max_seconds:
            raise StreamClose(
                CloseCode.TOO_LONG,
                "too_long",
                f"the session would pass {self.settings.stream_max_seconds:g} s of audio "
                "(stream_max_seconds); open a new session",
            )
        self.ring.append(samples)
        self.ctx.metrics.safe(lambda: self.ctx.metrics.stream_audio_seconds.inc(n / self.rate))
        for track in self.tracks:
            for cut in track.cut(self.ring.end):
                self._enqueue(track, cut, arrived)
        self.ring.discard_before(min(t.needed_from for t in self.tracks))

    def _decode(self, data: bytes) -> NDArray[np.float32]:
        """One binary frame -> mono float32, as ``/classify`` decodes a WAV of it."""
        if len(data) % self.frame_bytes:
            raise StreamClose(
                CloseCode.BAD_REQUEST,
                "partial_frame",
                f"a binary frame of {len(data)} bytes is not a whole number of sample frames of "
                f"{self.frame_bytes} bytes ({self.opening.format} x {self.opening.channels} "
                "channels)",
            )
        if self.opening.format == "pcm16":
            wave = np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)
        else:
            wave = np.frombuffer(data, dtype="<f4").astype(np.float32)
            if not np.isfinite(wave).all():
                raise StreamClose(
                    CloseCode.BAD_REQUEST, "not_finite", "an f32 frame holds NaN or infinity"
                )
        channels = self.opening.channels
        if channels == 1:
            return wave
        planar = torch.from_numpy(np.ascontiguousarray(wave.reshape(-1, channels).T))
        return downmix(planar).numpy()

    # -- windows ----------------------------------------------------------------------------
    def _enqueue(self, track: Track, cut: Cut, arrived: float) -> None:
        record = Record(cut, arrived)
        if not self.outbox.add(record):
            log.error(
                "stream session %s: track %d queued more windows than its deadlines allow",
                self.ctx.session,
                cut.track,
            )
            raise StreamClose(CloseCode.INTERNAL, "internal", "server error")
        if self.pending >= self.settings.stream_max_pending_windows:
            self._answered(record, _overloaded(cut, self.pending))
            return
        samples = self.ring.read(cut.start, cut.stop)
        self.pending += 1
        task = asyncio.create_task(self._answer(track, record, samples))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, track: Track, record: Record, samples: NDArray[np.float32]) -> None:
        try:
            message = await answer_window(self.ctx, track, record.cut, samples)
        except StreamClose as close:
            self.finish(close)
            return
        finally:
            self.pending -= 1
        self._answered(record, message)

    def _answered(self, record: Record, message: StreamWindow | StreamDropped) -> None:
        self.outbox.answered(record, message)
        if isinstance(message, StreamDropped):
            self.ctx.metrics.safe(
                lambda: self.ctx.metrics.stream_dropped.labels(reason=message.reason).inc()
            )
        out, limits = self.outbox, self.settings
        if out.windows > limits.stream_max_unsent or (
            out.bytes > limits.stream_max_unsent_bytes and out.messages > 1
        ):
            self.finish(
                StreamClose(
                    CloseCode.NOT_READING,
                    "not_reading",
                    f"{out.windows} answered windows ({out.bytes} bytes of messages) waited for "
                    f"the client to read them, over stream_max_unsent ({limits.stream_max_unsent})"
                    f" or stream_max_unsent_bytes ({limits.stream_max_unsent_bytes}); read "
                    "messages as they come",
                )
            )
        self.wake.set()

    # -- sending ----------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while not self.closing.done():
            await self.wake.wait()
            self.wake.clear()
            while (record := self.outbox.pop()) is not None:
                await self._send_record(record)
            if self.ended and not self.outbox:
                c = self.counts
                await self._send(
                    StreamEnd(windows=c.windows, dropped=c.dropped, seconds=self.seconds)
                )
                self.finish(StreamClose(CloseCode.NORMAL, "end", ""))
                return

    async def _send_record(self, record: Record) -> None:
        message = record.message
        metrics = self.ctx.metrics
        if isinstance(message, StreamWindow):
            lag = time.monotonic() - record.arrived
            message.lag_s = round(lag, 6)
            self.counts.windows += 1
            self.counts.lags.append(lag)

            def record_window() -> None:
                metrics.stream_lag.observe(lag)
                for result in message.results:
                    metrics.stream_windows.labels(adapter=result.adapter).inc()

            metrics.safe(record_window)
        else:
            self.counts.dropped += 1
        assert message is not None
        await self._send(message)

    async def _send(self, message: BaseModel) -> None:
        timeout = self.settings.stream_idle_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.ws.send_text(message.model_dump_json())
        except TimeoutError:
            raise StreamClose(
                CloseCode.NOT_READING,
                "not_reading",
                f"a message could not be sent for {timeout:g} s; read messages as they come",
            ) from None
        except Exception:  # the client left mid-send
            raise StreamClose(1006, "disconnected", "") from None

    def summary(self, close: StreamClose) -> str:
        lags = sorted(self.counts.lags)
        p50 = f"{statistics.median(lags):.3f} s" if lags else "-"
        adapters = ",".join(f"{a.name}@{a.version}" for t in self.tracks for a in t.adapters)
        return (
            f"stream session {self.ctx.session} closed {close.code} ({close.reason}): "
            f"{adapters}, {self.counts.windows} windows, {self.counts.dropped} dropped, "
            f"{self.seconds:.1f} s of audio, p50 lag {p50}"
        )


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they end (their ``finally`` releases the leases and
    cancels queued jobs). Cancelled again while any runs, bounded: a cancellation that lands as
    an awaited result arrives is lost (``asyncio.wait_for`` on Python 3.11), and a session must
    not hang on it."""
    for _ in range(10):
        for task in tasks:
            task.cancel()
        _, running = await asyncio.wait(tasks, timeout=SEND_TIMEOUT_S / 10)
        if not running:
            return
        tasks = list(running)
    log.error("%d tasks of a stream session did not end when cancelled", len(tasks))


def _is_end(text: str) -> bool:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and value == {"type": "end"}


def _overloaded(cut: Cut, pending: int) -> StreamDropped:
    return StreamDropped(
        track=cut.track,
        index=cut.index,
        start_s=round(cut.start_s, 6),
        end_s=round(cut.end_s, 6),
        reason="overloaded",
        message=f"{pending} windows of this session were still being answered "
        "(stream_max_pending_windows); this one was skipped to keep the lag bounded",
    )
