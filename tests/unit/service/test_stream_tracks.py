"""service.stream.tracks: the windows a track cuts, for streams arriving in arbitrary chunks,
against arithmetic written here from the protocol's definition (exact fractions)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lookaside.features import FeatureConfig
from service.stream.tracks import StreamAdapterRef, Track, build_tracks


def _expected(total: int, frames: int, hop: int, rate: int) -> list[tuple[int, int]]:
    """Window k covers [floor(k * hop * 10 ms * rate), + ceil(((frames-1)*10 + 25) ms * rate)),
    cut while it fits; then a tail from the next start to the end when the audio after the last
    full window is at least one 25 ms analysis window and not covered already."""
    span = math.ceil(Fraction((frames - 1) * 10 + 25, 1000) * rate)
    out = []
    k = 0
    while math.floor(Fraction(k * hop, 100) * rate) + span <= total:
        start = math.floor(Fraction(k * hop, 100) * rate)
        out.append((start, start + span))
        k += 1
    covered = out[-1][1] if out else 0
    start = math.floor(Fraction(k * hop, 100) * rate)
    if total > covered and total - start >= math.ceil(Fraction(25, 1000) * rate):
        out.append((start, total))
    return out


@pytest.mark.parametrize(
    ("frames", "hop", "rate"),
    [(128, 128, 16_000), (128, 50, 16_000), (64, 10, 44_100), (1024, 333, 22_050), (7, 3, 8_000)],
)
def test_cuts_in_any_chunking_equal_the_arithmetic(frames: int, hop: int, rate: int) -> None:
    rng = np.random.default_rng(frames + hop)
    for total in [0, 1, int(rng.integers(rate // 10, rate * 12)), int(rng.integers(1, rate * 3))]:
        track = Track(0, frames, hop, rate)
        received = 0
        cuts = []
        while received < total:
            received = min(total, received + int(rng.integers(1, rate)))
            cuts += track.cut(received)
            assert track.needed_from <= received
        tail = track.tail(total)
        got = [(c.start, c.stop) for c in cuts] + ([(tail.start, tail.stop)] if tail else [])
        assert got == _expected(total, frames, hop, rate)
        assert [c.index for c in cuts] + ([tail.index] if tail else []) == list(range(len(got)))
        assert track.cut(total * 2) == []  # nothing after the tail


def test_a_window_is_cut_once_its_last_sample_arrives() -> None:
    track = Track(0, 128, 64, 16_000)
    span = track.span
    assert span == math.ceil(Fraction(127 * 10 + 25, 1000) * 16_000)
    assert track.cut(span - 1) == []
    (first,) = track.cut(span)
    assert (first.start, first.stop, first.start_s) == (0, span, 0.0)
    assert track.cut(span + 10_239) == []
    (second,) = track.cut(span + 10_240)  # 64 frames of 10 ms at 16 kHz
    assert (second.index, second.start) == (1, 10_240)


def _ref(name: str, frames: int, rate: int = 16_000) -> StreamAdapterRef:
    cfg = FeatureConfig(target_frames=frames, sample_rate=rate)
    return StreamAdapterRef(ref=f"{name}@1", name=name, version=1, features=cfg)


def test_tracks_group_adapters_by_window_hop_and_feature_rate() -> None:
    a, b, c, d = _ref("a", 128), _ref("b", 64), _ref("c", 128), _ref("d", 128, rate=8_000)
    tracks = build_tracks([(a, 128), (b, 64), (c, 128), (d, 128), (a, 50)], 44_100)
    assert [(t.index, t.target_frames, t.hop_frames) for t in tracks] == [
        (0, 128, 128),
        (1, 64, 64),
        (2, 128, 128),
        (3, 128, 50),
    ]
    assert [[x.name for x in t.adapters] for t in tracks] == [["a", "c"], ["b"], ["d"], ["a"]]
    assert all(t.rate == 44_100 for t in tracks)
