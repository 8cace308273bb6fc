"""A bounded ring of mono float32 samples addressed by absolute stream position.

A ``/stream`` session appends each binary frame (downmixed) and cuts windows by absolute sample
positions (:mod:`lookaside.stream_protocol`); what no track needs any more is discarded. The
capacity is fixed when the session opens (the longest window span plus the largest frame, in
samples), so nothing a client sends can grow it; the buffer itself starts small and doubles up to
that capacity only as the retained audio needs it.

Threads: owned by the session's coroutine on the event loop; :meth:`SampleRing.read` hands out a
copy, so the featurize pool never reads the buffer the loop writes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["RingOverflow", "SampleRing"]

_INITIAL = 16384
"""Samples allocated at first (about 1 s at 16 kHz); doubled as needed up to the capacity."""


class RingOverflow(RuntimeError):
    """An append would hold more than the capacity (a bug of the caller: it sized the ring)."""


class SampleRing:
    """Samples ``[start, end)`` of a stream, at most ``capacity`` of them.

    Args:
        capacity: most samples held at once.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._buf: NDArray[np.float32] = np.zeros(min(capacity, _INITIAL), dtype=np.float32)
        self._head = 0
        """Index in ``_buf`` of absolute position :attr:`start`."""
        self.start = 0
        """Absolute position of the oldest sample held."""
        self.end = 0
        """Absolute position after the newest sample (samples received so far)."""

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def allocated(self) -> int:
        """Samples allocated now (at most :attr:`capacity`)."""
        return int(self._buf.shape[0])

    def append(self, samples: NDArray[np.float32]) -> None:
        """Add ``samples`` after :attr:`end`.

        Raises:
            RingOverflow: the ring would hold more than :attr:`capacity` samples.
        """
        n = int(samples.shape[0])
        if n == 0:
            return
        needed = len(self) + n
        if needed > self.capacity:
            raise RingOverflow(
                f"{needed} samples would be held, over the ring's capacity of {self.capacity}"
            )
        if needed > self.allocated:
            self._grow(needed)
        size = self.allocated
        tail = (self._head + len(self)) % size
        first = min(n, size - tail)
        self._buf[tail : tail + first] = samples[:first]
        self._buf[: n - first] = samples[first:]
        self.end += n

    def read(self, start: int, stop: int) -> NDArray[np.float32]:
        """A copy of samples ``[start, stop)`` (absolute positions, all still held)."""
        if not self.start <= start <= stop <= self.end:
            raise IndexError(
                f"[{start}, {stop}) is not within the ring's [{self.start}, {self.end})"
            )
        size = self.allocated
        begin = (self._head + start - self.start) % size
        n = stop - start
        first = min(n, size - begin)
        out = np.empty(n, dtype=np.float32)
        out[:first] = self._buf[begin : begin + first]
        out[first:] = self._buf[: n - first]
        return out

    def discard_before(self, position: int) -> None:
        """Forget the samples before ``position`` (clamped to what is held)."""
        position = min(max(position, self.start), self.end)
        if self.allocated:
            self._head = (self._head + position - self.start) % self.allocated
        self.start = position

    def _grow(self, needed: int) -> None:
        size = self.allocated
        while size < needed:
            size *= 2
        size = min(size, self.capacity)
        held = self.read(self.start, self.end)
        self._buf = np.zeros(size, dtype=np.float32)
        self._buf[: held.shape[0]] = held
        self._head = 0
