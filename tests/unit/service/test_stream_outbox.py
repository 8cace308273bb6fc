"""The per-track outbox of a ``/stream`` session (service/stream/outbox.py): a track whose window
is still in the engine holds back only its own later records; only the answered front of each
track counts toward the unsent limits; a track's queue has a hard cap from the deadlines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lookaside.stream_protocol import StreamDropped, StreamLabel, StreamResult, StreamWindow
from service.stream.outbox import Outbox, Record, queue_cap
from service.stream.tracks import Cut, Track
from tests.integration.service.svc_support import settings

RATE = 16_000


def _window(track: int, index: int) -> StreamWindow:
    result = StreamResult(adapter="a", version=1, labels=[StreamLabel(label="x", score=0.5)])
    return StreamWindow(
        track=track, index=index, start_s=0.0, end_s=1.0, results=[result], lag_s=0.0
    )


def _dropped(track: int, index: int) -> StreamDropped:
    return StreamDropped(
        track=track, index=index, start_s=0.0, end_s=1.0, reason="overloaded", message="m"
    )


def _record(track: int, index: int, arrived: float) -> Record:
    return Record(Cut(track, index, index * 1600, index * 1600 + 8000, RATE), arrived)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    tracks = [Track(0, 64, 10, RATE), Track(1, 48, 10, RATE)]
    return Outbox(tracks, settings(tmp_path / "store"))


def test_a_pending_window_holds_back_only_its_own_track(outbox: Outbox) -> None:
    slow = _record(0, 0, arrived=1.0)
    behind = [_record(0, i, arrived=1.0) for i in range(1, 41)]
    other = [_record(1, i, arrived=1.0 + i) for i in range(3)]
    for r in [slow, *behind, *other]:
        assert outbox.add(r)
    for i, r in enumerate(behind, 1):  # answered at once (overloaded) behind a pending one
        outbox.answered(r, _dropped(0, i))
    # nothing of track 0 can be sent yet, so none of it counts
    assert (outbox.messages, outbox.windows, outbox.bytes) == (0, 0, 0)
    for i, r in enumerate(other):
        outbox.answered(r, _window(1, i))
    assert (outbox.messages, outbox.windows) == (3, 3)
    assert outbox.bytes == sum(len(_window(1, i).model_dump_json()) for i in range(3))
    popped = [outbox.pop() for _ in range(3)]
    assert [(r.cut.track, r.cut.index) for r in popped if r] == [(1, 0), (1, 1), (1, 2)]
    assert outbox.pop() is None
    outbox.answered(slow, _window(0, 0))
    assert (outbox.messages, outbox.windows) == (41, 1)
    order = []
    while (r := outbox.pop()) is not None:
        order.append(r.cut.index)
    assert order == list(range(41))
    assert (outbox.messages, outbox.windows, outbox.bytes) == (0, 0, 0)
    assert not outbox


def test_tracks_interleave_in_the_order_their_windows_completed(outbox: Outbox) -> None:
    records = [_record(0, 0, 3.0), _record(1, 0, 1.0), _record(0, 1, 4.0), _record(1, 1, 2.0)]
    for r in records:
        outbox.add(r)
        outbox.answered(r, _window(r.cut.track, r.cut.index))
    got = [(r.cut.track, r.cut.index) for r in iter(outbox.pop, None)]
    assert got == [(1, 0), (1, 1), (0, 0), (0, 1)]


def test_a_track_queues_at_most_what_its_deadlines_allow(tmp_path: Path) -> None:
    s = settings(tmp_path / "store")
    behind = s.request_timeout_s + 2.0 + s.stream_max_ahead_s + s.stream_idle_timeout_s
    cap = queue_cap(s, 0.1)
    assert cap == s.stream_max_unsent + math.ceil(behind / 0.1) + 2
    outbox = Outbox([Track(0, 64, 10, RATE)], s)
    for i in range(cap):
        assert outbox.add(_record(0, i, 1.0))
    assert not outbox.add(_record(0, cap, 1.0))
