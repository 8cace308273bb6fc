"""Each Ray process's own metrics, exported through Ray's metrics export, labelled by replica.

A model replica's engine and registry record into the same :class:`~service.metrics.ServiceMetrics`
as one process (rows and adapters per batch, forward and queue-wait seconds, adapter loads,
evictions and load failures per adapter, engine stalls, the ONNX Runtime engine's counters), and
an ingress records requests by adapter, route and status as one process does. Nothing serves a
replica's registry over HTTP, and a scrape of ``/metrics`` through Ray's proxy reaches one ingress
replica only; so :class:`RayExport` copies each process's registry every
``interval_s`` into ``ray.serve.metrics`` gauges, which Ray's metrics agent on each node exposes
on its metrics export port (``ray start --metrics-export-port``) with Prometheus service
discovery, tagged with ``application``, ``deployment`` and ``replica``; Ray prefixes the names with
``ray_`` (``ray_lookaside_batch_rows_bucket``, docs/ray.md has queries).

Counters and histogram series are exported as gauges of their cumulative values (a Ray counter
only takes increments; mirroring a cumulative value is a set): ``rate()`` and
``histogram_quantile()`` read them as they read the originals. Sizes: one gauge per metric name
and label set, as in the registry itself (labels are adapter names at most).

Threads: :meth:`RayExport.run` is a task on the replica's event loop; a copy is a few hundred
microseconds of Python per adapter label set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from ray.serve import metrics as serve_metrics

log = logging.getLogger("service.ray.export")

EXPORT_S = 5.0
"""How often each Ray process copies its metrics to Ray's metrics export."""
RESERVED = frozenset({"deployment", "replica", "application", "route"})
"""Tags Ray Serve sets itself; a label of ours with one of these names is exported as
``lookaside_<name>``."""


class RayExport:
    """Copies one prometheus_client registry into Ray Serve gauges (module docstring)."""

    def __init__(self, registry: CollectorRegistry, *, interval_s: float = 5.0) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._gauges: dict[tuple[str, tuple[str, ...]], serve_metrics.Gauge] = {}

    def sync(self) -> int:
        """One copy of every sample; returns how many were set."""
        count = 0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # creation timestamps: not a measurement
                tags = {_tag(k): v for k, v in sample.labels.items()}
                key = (sample.name, tuple(sorted(tags)))
                gauge = self._gauges.get(key)
                if gauge is None:
                    gauge = serve_metrics.Gauge(
                        sample.name,
                        description=family.documentation,
                        tag_keys=key[1],  # type: ignore[arg-type]  # Ray annotates Tuple[str]
                    )
                    self._gauges[key] = gauge
                gauge.set(float(sample.value), tags=tags)
                count += 1
        return count

    async def run(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """Copy every ``interval_s`` until ``stopped()`` or cancelled (a failed copy is logged,
        never raised)."""
        while not stopped():
            await asyncio.sleep(self.interval_s)
            try:
                self.sync()
            except Exception:
                log.exception("exporting the replica's metrics to Ray failed")


def _tag(label: str) -> str:
    return f"lookaside_{label}" if label in RESERVED else label
