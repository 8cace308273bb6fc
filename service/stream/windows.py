"""One ``/stream`` window -> its answer: the same steps and functions as ``POST /classify``.

For each window of a track: acquire a lease per adapter (the pinned ``name@version``, or the
active version when following) -> featurise the window's samples in the featurize pool with
:func:`lookaside.clip_windows.featurize_wave` (the step ``/classify`` runs after decoding) ->
one engine job per adapter (rows of live sessions batch with ``/classify``'s) -> scores with
:func:`lookaside.clip_scores.clip_scores` and :func:`~lookaside.clip_scores.top_labels`. A window
is one row, so its clip score is that row's score: a streamed window equals ``/classify`` of the
same samples. Every path out cancels the queued jobs and releases the leases (as
:mod:`service.pipeline`), so a pinned version is held only while its windows run.

An engine refusal becomes a :class:`~lookaside.stream_protocol.StreamDropped` (the session goes
on); an adapter gone (deleted while pinned, or a followed version that no longer fits the track)
raises :class:`StreamClose` (the session ends).

Threads: runs on the event loop; features are computed in the featurize pool; the engine worker
runs the rows and completes the futures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from lookaside.clip_scores import clip_scores, top_labels
from lookaside.clip_windows import featurize_wave
from lookaside.errors import AdapterNotFound, LookasideError
from lookaside.features import FeatureConfig
from lookaside.stream_protocol import (
    CloseCode,
    StreamDropped,
    StreamLabel,
    StreamResult,
    StreamWindow,
)
from lookaside.tasks import CLIP
from service.backend import Adapters, Jobs
from service.errors import AdapterUnavailable, NotReady, QueueFull, RequestTimeout
from service.metrics import ServiceMetrics
from service.registry import Lease
from service.request_io import TIMEOUT_MESSAGE, in_pool
from service.stream.tracks import Cut, StreamAdapterRef, Track

__all__ = ["StreamClose", "WindowContext", "answer_window"]

log = logging.getLogger("service.stream")


class StreamClose(Exception):
    """End the session with ``code`` (a :class:`StreamError` first when ``code >= 4000``)."""

    def __init__(self, code: int, reason: str, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.gone = gone
        """The connection is closed already (send nothing)."""


@dataclass(frozen=True)
class WindowContext:
    """What every window of one session needs."""

    session: str
    engine: Jobs
    registry: Adapters
    pool: ThreadPoolExecutor
    metrics: ServiceMetrics
    timeout_s: float
    """Each window's deadline (``request_timeout_s``), from its cut to its answer."""
    top_k: int
    logged: set[str] = field(default_factory=set)
    """Failures already logged at ERROR in this session (each kind once; then only counted)."""


async def answer_window(
    ctx: WindowContext, track: Track, cut: Cut, samples: NDArray[np.float32]
) -> StreamWindow | StreamDropped:
    """The window's message (lag filled in when sent).

    Raises:
        StreamClose: an adapter of the track cannot serve this window any more.
    """
    deadline = time.monotonic() + ctx.timeout_s
    leases: list[Lease] = []
    futures: list[Future[Tensor]] = []
    try:
        for adapter in track.adapters:
            leases.append(await _acquire(ctx, adapter, deadline))
        configs = [_config(a, lease) for a, lease in zip(track.adapters, leases, strict=True)]
        wave = torch.from_numpy(samples)
        by_config = await in_pool(
            ctx.pool, lambda: featurize_wave(wave, cut.rate, configs), deadline=deadline
        )
        request_id = f"{ctx.session}-{cut.track}-{cut.index}"
        for lease, cfg in zip(leases, configs, strict=True):
            futures.append(
                ctx.engine.submit_task(
                    CLIP,
                    (by_config[cfg].features,),
                    lease.adapter_id,
                    request_id=request_id,
                    timeout_s=max(deadline - time.monotonic(), 0.0),
                )
            )
        outputs = await _results(futures, deadline - time.monotonic())
    except StreamClose:
        raise
    except (QueueFull, RequestTimeout, NotReady, AdapterUnavailable) as exc:
        return _dropped(cut, exc)
    except Exception as exc:
        _log_failure(ctx, cut, exc)
        return _dropped(cut, exc)
    finally:
        for fut in futures:
            fut.cancel()  # no-op once running or done
        for lease in leases:
            lease.release()
    results = [_result(lease, out, ctx.top_k) for lease, out in zip(leases, outputs, strict=True)]
    return StreamWindow(
        track=cut.track,
        index=cut.index,
        start_s=round(cut.start_s, 6),
        end_s=round(cut.end_s, 6),
        results=results,
        lag_s=0.0,
    )


def _log_failure(ctx: WindowContext, cut: Cut, exc: Exception) -> None:
    """Log a failed window at ERROR (with the trace unless a project error) once per session
    and kind of failure: a failure that repeats on every window would flood the log, and
    ``lookaside_stream_dropped_windows_total{reason="failed"}`` counts them all."""
    kind = type(exc).__name__
    where = f"{ctx.session}-{cut.track}-{cut.index}"
    if kind in ctx.logged:
        log.debug("window %s failed again (%s): %s", where, kind, exc)
        return
    ctx.logged.add(kind)
    more = "; later failures of this kind in this session are only counted"
    if isinstance(exc, LookasideError):
        log.error("window %s failed: %s%s", where, exc, more)
    else:
        log.error("window %s failed%s", where, more, exc_info=exc)


async def _results(futures: list[Future[Tensor]], timeout: float) -> list[Tensor]:
    """Every job's logits within ``timeout`` (504-like :class:`RequestTimeout` past it). A
    cancelled window cancels the wait itself (``asyncio.timeout``, not ``wait_for``, whose
    cancellation can be lost on Python 3.11), and ``answer_window`` cancels the jobs."""
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
    except TimeoutError:
        raise RequestTimeout(TIMEOUT_MESSAGE) from None


async def _acquire(ctx: WindowContext, adapter: StreamAdapterRef, deadline: float) -> Lease:
    try:
        return await ctx.registry.acquire(adapter.ref, timeout=deadline - time.monotonic())
    except AdapterNotFound as exc:
        what = "the pinned version" if "@" in adapter.ref else "the followed adapter"
        raise StreamClose(
            CloseCode.NOT_FOUND,
            "adapter_gone",
            f"{what} {adapter.ref} is no longer in the store ({exc}); reopen the session with an "
            "adapter that exists (GET /adapters lists them)",
        ) from None


def _config(adapter: StreamAdapterRef, lease: Lease) -> FeatureConfig:
    """The feature config this window runs for ``lease``: its own (a followed version may
    bring new statistics), provided its window geometry is still the track's."""
    manifest = lease.manifest
    cfg = manifest.features
    if not CLIP.serves(manifest.method) or (
        cfg.target_frames != adapter.features.target_frames
        or cfg.sample_rate != adapter.features.sample_rate
    ):
        raise StreamClose(
            CloseCode.UNSUPPORTED,
            "window_changed",
            f"the active version {manifest.id} of the followed adapter {adapter.name} "
            f"({manifest.method}, {cfg.target_frames} frames at {cfg.sample_rate} Hz) no longer "
            f"fits this session's track ({adapter.features.target_frames} frames at "
            f"{adapter.features.sample_rate} Hz); reopen the session",
        )
    return cfg


def _result(lease: Lease, logits: Tensor, k: int) -> StreamResult:
    manifest = lease.manifest
    scores = clip_scores(logits, multi_label=manifest.task_type == "multilabel").clip
    return StreamResult(
        adapter=manifest.name,
        version=manifest.version,
        labels=[
            StreamLabel(label=lb, score=s) for lb, s in top_labels(scores, list(manifest.labels), k)
        ],
    )


_REASONS: list[tuple[type[Exception], str]] = [
    (QueueFull, "queue_full"),
    (RequestTimeout, "timeout"),
    (NotReady, "not_ready"),
    (AdapterUnavailable, "not_ready"),
]


def _dropped(cut: Cut, exc: Exception) -> StreamDropped:
    reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "failed")
    message = (
        str(exc)
        if isinstance(exc, LookasideError) and reason != "failed"
        else ("the window failed on the server; the server log has the trace")
    )
    return StreamDropped(
        track=cut.track,
        index=cut.index,
        start_s=round(cut.start_s, 6),
        end_s=round(cut.end_s, 6),
        reason=reason,
        message=message,
    )
