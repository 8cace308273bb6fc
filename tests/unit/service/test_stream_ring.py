"""service.stream.ring against a plain array of everything appended (the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from service.stream.ring import RingOverflow, SampleRing


def test_random_appends_reads_and_discards_match_the_whole_stream() -> None:
    rng = np.random.default_rng(0)
    capacity = 50_000
    ring = SampleRing(capacity)
    stream = rng.standard_normal(2_000_000).astype(np.float32)
    pos = 0
    for _ in range(400):
        n = int(rng.integers(0, 9_000))
        if len(ring) + n > capacity:
            ring.discard_before(ring.end - int(rng.integers(0, capacity - n)))
        ring.append(stream[pos : pos + n])
        pos += n
        assert ring.end == pos
        assert ring.allocated <= capacity
        start = int(rng.integers(ring.start, ring.end + 1))
        stop = int(rng.integers(start, ring.end + 1))
        np.testing.assert_array_equal(ring.read(start, stop), stream[start:stop])
        ring.discard_before(int(rng.integers(ring.start, ring.end + 1)))
        np.testing.assert_array_equal(ring.read(ring.start, ring.end), stream[ring.start : pos])


def test_grows_lazily_up_to_its_capacity_and_never_past_it() -> None:
    ring = SampleRing(100_000)
    ring.append(np.zeros(10, dtype=np.float32))
    assert ring.allocated < 100_000  # nothing allocated ahead of need
    ring.append(np.ones(99_990, dtype=np.float32))
    assert ring.allocated == 100_000
    with pytest.raises(RingOverflow):
        ring.append(np.zeros(1, dtype=np.float32))
    ring.discard_before(50_000)
    ring.append(np.full(50_000, 2.0, dtype=np.float32))  # wraps around the buffer
    assert ring.allocated == 100_000
    out = ring.read(50_000, 150_000)
    assert out[:50_000].tolist() == [1.0] * 50_000
    assert out[50_000:].tolist() == [2.0] * 50_000


def test_reading_outside_what_is_held_is_refused() -> None:
    ring = SampleRing(100)
    ring.append(np.arange(60, dtype=np.float32))
    ring.discard_before(20)
    with pytest.raises(IndexError):
        ring.read(10, 30)  # discarded already
    with pytest.raises(IndexError):
        ring.read(50, 61)  # not received yet
    ring.discard_before(1000)  # clamped to what was received
    assert (ring.start, ring.end, len(ring)) == (60, 60, 0)
