"""Tracks of a ``/stream`` session: the adapters that share one window geometry, and the windows
each cuts as samples arrive.

Adapters whose feature configs have the same ``target_frames`` and sample rate, streamed at the
same hop, see the very same samples in every window, so they form one *track*: one window is
cut, featurised once per distinct config and answered in one
:class:`~lookaside.stream_protocol.StreamWindow` carrying every adapter of the track. The
arithmetic is :mod:`lookaside.stream_protocol`'s (exact integers), so the server, the client and
the tests agree on every window's samples.

Threads: event loop only (the session's coroutine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lookaside.features import FeatureConfig
from lookaside.stream_protocol import tail_window, window_span, window_start

__all__ = ["Cut", "StreamAdapterRef", "Track", "build_tracks"]


@dataclass(frozen=True)
class StreamAdapterRef:
    """One adapter of a session, as resolved when it opened."""

    ref: str
    """What each window acquires: ``name@version`` (pinned) or ``name`` (follow)."""
    name: str
    version: int
    """The version resolved at open."""
    features: FeatureConfig
    """Its feature config at open (the track's geometry comes from it)."""


@dataclass(frozen=True)
class Cut:
    """One window of one track: samples ``[start, stop)`` of the stream at the client's rate."""

    track: int
    index: int
    start: int
    stop: int
    rate: int
    tail: bool = False

    @property
    def start_s(self) -> float:
        return self.start / self.rate

    @property
    def end_s(self) -> float:
        return self.stop / self.rate


@dataclass
class Track:
    """Adapters sharing ``(target_frames, hop_frames, feature sample rate)``; cuts their windows."""

    index: int
    target_frames: int
    hop_frames: int
    rate: int
    """The client's sample rate (windows are cut in its samples)."""
    adapters: list[StreamAdapterRef] = field(default_factory=list)
    next_index: int = 0
    """The next window to cut."""
    done: bool = False
    """The tail was cut (``end``): no more windows."""

    @property
    def span(self) -> int:
        """Samples of one full window."""
        return window_span(self.target_frames, self.rate)

    @property
    def window_s(self) -> float:
        return self.span / self.rate

    @property
    def hop_s(self) -> float:
        return self.hop_frames / 100.0

    @property
    def needed_from(self) -> int:
        """The first sample this track still needs (the next window's start)."""
        return window_start(self.next_index, self.hop_frames, self.rate)

    def cut(self, received: int) -> list[Cut]:
        """The full windows that ``received`` samples complete and were not cut yet."""
        cuts: list[Cut] = []
        span = self.span
        while not self.done:
            start = window_start(self.next_index, self.hop_frames, self.rate)
            if start + span > received:
                break
            cuts.append(Cut(self.index, self.next_index, start, start + span, self.rate))
            self.next_index += 1
        return cuts

    def tail(self, received: int) -> Cut | None:
        """The shorter last window at ``end`` (after cutting every full one), or None; the track
        cuts nothing more afterwards."""
        cuts = self.cut(received)
        assert not cuts, "cut every full window before the tail"
        self.done = True
        span = tail_window(received, self.target_frames, self.hop_frames, self.rate)
        if span is None:
            return None
        self.next_index += 1
        return Cut(self.index, self.next_index - 1, span[0], span[1], self.rate, tail=True)


def build_tracks(adapters: list[tuple[StreamAdapterRef, int]], rate: int) -> list[Track]:
    """Group ``(adapter, hop_frames)`` pairs into tracks, in the order adapters were named."""
    tracks: dict[tuple[int, int, int], Track] = {}
    for adapter, hop in adapters:
        key = (adapter.features.target_frames, hop, adapter.features.sample_rate)
        track = tracks.get(key)
        if track is None:
            track = tracks[key] = Track(len(tracks), key[0], hop, rate)
        track.adapters.append(adapter)
    return list(tracks.values())
