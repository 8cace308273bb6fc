"""The model replicas' per-adapter metrics, labelled by replica, on the ingress's ``/metrics``.

Every call to a replica answers with the replica's id and what it saw (a load, its queue depth,
its resident adapters: :class:`~service.ray.wire.ReplicaAnswer`), so the ingress that made the call
exports them in its own registry and one Prometheus scrape of the ingress sees every replica it
talked to, without Prometheus discovering replica processes. Ray Serve's own metrics
(``ray_serve_*``, by deployment and replica, on each node's Ray metrics port) add what Ray knows:
ongoing requests, multiplexed model loads, replica restarts (docs/ray.md has the queries).

A replica that stops answering keeps its last gauge values until :meth:`ReplicaMetrics.forget`
drops it (the ingress does after ``STALE_S`` without an answer), so a restart does not leave a
replica's queue depth frozen in the dashboards.
"""

from __future__ import annotations

import contextlib
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.ray.wire import ReplicaAnswer

STALE_S = 60.0
"""Seconds without an answer after which a replica's gauges and residents are dropped."""


class ReplicaMetrics:
    """Counters and gauges per replica, fed by each answer (event loop), read at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "lookaside_replica_calls",
            "Calls answered by a model replica, by adapter and outcome",
            ["replica", "adapter", "outcome"],
            registry=registry,
        )
        self.loads = Counter(
            "lookaside_replica_adapter_loads",
            "Calls that found their adapter not resident on the replica (loads)",
            ["replica", "adapter"],
            registry=registry,
        )
        self.retries = Counter(
            "lookaside_replica_retries",
            "Calls sent again to another replica, by why",
            ["reason"],
            registry=registry,
        )
        self.call_seconds = Histogram(
            "lookaside_replica_call_seconds",
            "Ingress to replica and back, per call",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "lookaside_replica_queue_depth",
            "Jobs waiting in the replica's engine at its last answer",
            ["replica"],
            registry=registry,
        )
        self.resident_count = Gauge(
            "lookaside_replica_adapters_resident",
            "Adapter versions resident on the replica at its last answer",
            ["replica"],
            registry=registry,
        )
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, tuple[str, ...]]] = {}

    def answered(self, answer: ReplicaAnswer, adapter: str, seconds: float) -> None:
        """Record one answer (``adapter``: the name, as the request metrics label it)."""
        outcome = "ok" if answer.error is None else answer.error.kind
        self.calls.labels(replica=answer.replica, adapter=adapter, outcome=outcome).inc()
        if answer.loaded:
            self.loads.labels(replica=answer.replica, adapter=adapter).inc()
        self.call_seconds.observe(seconds)
        self.queue_depth.labels(replica=answer.replica).set(answer.queue_depth)
        self.resident_count.labels(replica=answer.replica).set(len(answer.resident))
        with self._lock:
            self._seen[answer.replica] = (time.monotonic(), answer.resident)

    def resident(self) -> dict[str, tuple[str, ...]]:
        """Each replica heard from in the last ``STALE_S``: its resident ids at its last answer."""
        self.forget()
        with self._lock:
            return {replica: ids for replica, (_, ids) in self._seen.items()}

    def forget(self, now: float | None = None) -> None:
        """Drop the replicas not heard from in ``STALE_S`` (restarted or scaled away)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [r for r, (seen, _) in self._seen.items() if now - seen > STALE_S]
            for replica in stale:
                del self._seen[replica]
        for replica in stale:
            for gauge in (self.queue_depth, self.resident_count):
                with contextlib.suppress(KeyError):
                    gauge.remove(replica)
