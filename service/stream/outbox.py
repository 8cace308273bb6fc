"""A ``/stream`` session's outbox: one queue of window records per track, in cut order.

Order is promised per track only, so each track has its own queue: a track whose window is still
in the engine holds back its own later records, never another track's (nor inflates their
``lag_s``). A record can be sent once it and every record before it in its track are answered
(the *sendable* front of each queue). Only those count toward the session's limits:

- ``stream_max_unsent``: sendable window messages (a burst of ``dropped: overloaded`` answered at
  once as a frame is cut is not a client that does not read; at most
  ``stream_max_pending_windows`` windows are answered by the engine at a time);
- ``stream_max_unsent_bytes``: bytes of every sendable message (one window message may carry
  ``top_k`` 1000 labels x 16 adapters); one message alone never trips it.

Records queued behind a window still in the engine are bounded without a limit of their own:
each window is answered (or dropped ``timeout``) within ``request_timeout_s`` of its cut, and
meanwhile the client can send at most ``request_timeout_s + stream_max_ahead_s +
stream_idle_timeout_s`` seconds of audio (ahead of real time by at most ``stream_max_ahead_s``,
and behind it by at most ``stream_idle_timeout_s``, else 4408 ``starved``), so a track queues at
most ``stream_max_unsent`` + that / hop + 2 records. :meth:`Outbox.add` enforces that cap (with
the close's own 2 s of slack): passing it is a server bug (a window that outlived its deadline),
closed with 1011 and logged, never a queue that grows. Dropping the window instead would not bound
anything: a ``dropped`` message is a record in the same queue.

Threads: event loop only (the session's coroutines).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from lookaside.stream_protocol import StreamDropped, StreamWindow
from service.settings import ServiceSettings
from service.stream.tracks import Cut, Track

__all__ = ["Outbox", "Record", "queue_cap"]

CLOSE_SLACK_S = 2.0
"""Slack over a window's deadline (its cancellation and the last send), seconds."""


@dataclass(eq=False)
class Record:
    """One cut window, until its message is sent."""

    cut: Cut
    arrived: float
    """Monotonic arrival of the frame that completed it (or of ``end``, for a tail)."""
    message: StreamWindow | StreamDropped | None = None
    size: int = 0
    """Bytes of the message's JSON once answered (``lag_s`` adds a few when sent)."""


def queue_cap(settings: ServiceSettings, hop_s: float) -> int:
    """Most records one track can hold (module docstring)."""
    behind = (
        settings.request_timeout_s
        + CLOSE_SLACK_S
        + settings.stream_max_ahead_s
        + settings.stream_idle_timeout_s
    )
    return settings.stream_max_unsent + math.ceil(behind / hop_s) + 2


class Outbox:
    """Per-track queues of records and the counts of what is sendable."""

    def __init__(self, tracks: list[Track], settings: ServiceSettings) -> None:
        self.queues: list[deque[Record]] = [deque() for _ in tracks]
        self.caps = [queue_cap(settings, t.hop_s) for t in tracks]
        self._ready = [0] * len(tracks)
        """Per track: how many records at the front are answered (sendable)."""
        self.windows = 0
        """Sendable window messages."""
        self.messages = 0
        """Sendable messages of either kind."""
        self.bytes = 0
        """Bytes of the sendable messages."""

    def __bool__(self) -> bool:
        """Whether any record is queued (answered or not)."""
        return any(self.queues)

    def add(self, record: Record) -> bool:
        """Queue ``record`` at the end of its track; False past the track's cap (a bug)."""
        queue = self.queues[record.cut.track]
        if len(queue) >= self.caps[record.cut.track]:
            return False
        queue.append(record)
        return True

    def answered(self, record: Record, message: StreamWindow | StreamDropped) -> None:
        """``record`` has its message; the front of its track may have become sendable."""
        record.message = message
        record.size = len(message.model_dump_json())
        track = record.cut.track
        queue = self.queues[track]
        while self._ready[track] < len(queue):
            ready = queue[self._ready[track]]
            if ready.message is None:
                break
            self._ready[track] += 1
            self.messages += 1
            self.bytes += ready.size
            self.windows += isinstance(ready.message, StreamWindow)

    def pop(self) -> Record | None:
        """The sendable record completed first over all tracks, taken off its queue; None if
        nothing is sendable."""
        best = -1
        for track, queue in enumerate(self.queues):
            if self._ready[track] and (best < 0 or queue[0].arrived < self.queues[best][0].arrived):
                best = track
        if best < 0:
            return None
        record = self.queues[best].popleft()
        self._ready[best] -= 1
        self.messages -= 1
        self.bytes -= record.size
        self.windows -= isinstance(record.message, StreamWindow)
        return record
