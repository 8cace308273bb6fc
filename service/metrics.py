"""Prometheus metrics of one app, in a registry of its own (not the process-global default), so
tests can build several apps in one process and each ``GET /metrics`` shows only its app.

Names (all prefixed ``lookaside_``):

==========================================  ======================================================
``requests_total{adapter,route,status}``    answers; ``adapter`` is the adapter's name (one
                                            sample per adapter of a multi-adapter request), or
                                            ``""`` where no adapter was resolved (every
                                            ``adapter`` label is capped: see below)
``request_seconds{route}``                  total latency (histogram)
``adapter_request_seconds{adapter}``        total latency of the requests naming an adapter (a
                                            multi-adapter request counts under each of them)
``queue_wait_seconds``                      submit -> batch start, per job
``featurize_seconds``                       decode + features per request
``forward_seconds``                         one batch's forward (incl. host<->device copies)
``batch_rows`` / ``batch_adapters``         rows and distinct adapters per batch
``queue_depth``                             jobs waiting (gauge)
``adapters_resident`` / ``adapters_in_store``  gauges
``adapter_load_seconds{tier}``              load into the bank (histogram), by where it was
                                            read from: ``host`` (the host tier: no disk read,
                                            no validation) or ``disk``
``adapter_evictions_total{adapter}``        evictions by the residency policy
``adapter_load_failures_total{adapter}``    loads that failed
``batch_failures_total``                    forwards that raised (rows then retried alone)
``batch_tokens``                            patch tokens per forward (rows x tokens per row;
                                            never over ``max_batch_tokens``)
``engine_stalled``                          1 while a forward, bank command or adapter load
                                            has run longer than ``engine_stall_s``, else 0
``engine_stalls_total``                     stalls detected by the engine watchdog
``cuda_memory_allocated_bytes`` /           where CUDA is present (read at scrape time)
``cuda_memory_reserved_bytes``
``onnx_batches_total{runtime}``             engine=onnxruntime: backbone passes on a graph
                                            (``onnxruntime``) or in eager PyTorch while a graph
                                            for a new stack was built (``pytorch``)
``onnx_graphs_total{origin}``               graphs made ready: ``exported`` or from ``cache``
``onnx_graphs_building``                    graphs being built now (gauge)
``onnx_graph_failures_total``               graphs that failed to build (their batches stay on
                                            PyTorch; the log has the trace)
``stream_sessions``                         live ``GET /stream`` sessions (gauge; opening ones
                                            included, at most ``stream_max_sessions``)
``stream_sessions_closed_total{code}``      sessions ended, by close code (``1000`` after
                                            ``end``, ``44xx``/``4503``/``1011`` as sent,
                                            ``1001`` at shutdown, ``client`` when the client
                                            left)
``stream_windows_total{adapter}``           streamed windows answered (one per adapter of the
                                            window's track)
``stream_dropped_windows_total{reason}``    windows answered ``dropped`` (``overloaded``,
                                            ``queue_full``, ``timeout``, ``not_ready``,
                                            ``failed``)
``stream_lag_seconds``                      arrival of a window's last sample -> its message
                                            sent (histogram; the ``lag_s`` of each window)
``stream_audio_seconds_total``              seconds of audio received over every session
``build_info{version,backbone,fingerprint,  1, once the backbone is loaded (``GET /info``'s
device,dtype,engine}``                      fields; join on it to label a panel by backbone)
``adapter_tier_*{tier}``                    hits, misses, evictions, bypass, bytes, in-flight
                                            bytes, budget and entries of the ``device`` and
                                            ``host`` tiers, read at scrape time
                                            (:mod:`service.metrics_tiers`)
==========================================  ======================================================

Besides these, unprefixed: ``process_*`` (CPU seconds, resident memory, open files, start time;
on Linux) and ``python_*`` (version, garbage collections), as prometheus_client's default registry
has them. ``route`` is the route's template (``/adapters/{name}``), a mount's path for the files
under it (``/static``, ``/docs/assets``), or ``unmatched`` for an unknown path: never the raw URL.

Adapter names are real label values (``adapter="esc50"``), never joined strings, and bounded:
the first ``max_adapters`` distinct names seen (``metrics_max_adapters``, 1000) keep their own
series in every metric with an ``adapter`` label, later names are counted under
``adapter="_other"``, and ``""`` stays ``""`` (:class:`~service.metrics_tiers.AdapterLabels`), so
the series and the render time stay flat however many adapters are served. Recording never fails
a request: :meth:`ServiceMetrics.safe` swallows and logs a metrics error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Mount, Route
from starlette.types import Scope

from service.metrics_tiers import AdapterLabels, CappedByAdapter, TierCollector
from service.tiers.host_cache import TierStats

log = logging.getLogger("service.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LAG = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_TOKENS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


UNMATCHED = "unmatched"
"""The ``route`` label of a request no route answered (a 404 of an unknown path)."""


def route_label(scope: Scope) -> str:
    """The ``route`` label of an answered request: the route's path template (``/adapters/{name}``),
    a mount's path for the files under it (``/static``, ``/docs/assets``), or ``unmatched``; never
    the raw URL, so the label's values are the app's routes however many URLs are asked for.

    FastAPI's routes put themselves in ``scope["route"]``; a mount or a plain Starlette route
    (``/openapi.json``) only leaves its ``endpoint`` there, found here among the app's routes.
    """
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", UNMATCHED))
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return UNMATCHED
    for candidate in getattr(scope.get("app"), "routes", ()):
        if isinstance(candidate, Mount) and candidate.app is endpoint:
            return candidate.path
        if isinstance(candidate, Route) and candidate.endpoint is endpoint:
            return candidate.path
    return UNMATCHED


class _CudaMemory(Collector):
    """CUDA memory of the process, read at scrape time (nothing when no GPU is present)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not torch.cuda.is_available():
            return
        allocated = GaugeMetricFamily(
            "lookaside_cuda_memory_allocated_bytes",
            "CUDA memory held by tensors",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "lookaside_cuda_memory_reserved_bytes",
            "CUDA memory reserved by the caching allocator",
            labels=["device"],
        )
        for i in range(torch.cuda.device_count()):
            allocated.add_metric([str(i)], float(torch.cuda.memory_allocated(i)))
            reserved.add_metric([str(i)], float(torch.cuda.memory_reserved(i)))
        yield allocated
        yield reserved


class _BuildInfo(Collector):
    """``lookaside_build_info``: no series until its labels are known (an Info metric would show
    an unlabelled one meanwhile)."""

    def __init__(self) -> None:
        self.labels: dict[str, str] | None = None

    def collect(self) -> Iterator[InfoMetricFamily]:
        labels = self.labels
        if labels is None:
            return
        family = InfoMetricFamily(
            "lookaside_build",
            "What this server runs: package version, backbone name and fingerprint, device, "
            "compute dtype, engine (from the first scrape after the backbone is loaded)",
        )
        family.add_metric([], labels)
        yield family


class _OnnxRuntime(Collector):
    """The ONNX Runtime engine's counters, read at scrape time from its runner's ``stats()``."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        batches = CounterMetricFamily(
            "lookaside_onnx_batches",
            "Backbone passes by where they ran: onnxruntime, or pytorch while a graph was built",
            labels=["runtime"],
        )
        batches.add_metric(["onnxruntime"], float(s["graph_runs"]))
        batches.add_metric(["pytorch"], float(s["eager_batches"]))
        yield batches
        graphs = CounterMetricFamily(
            "lookaside_onnx_graphs", "Graphs made ready, by origin", labels=["origin"]
        )
        graphs.add_metric(["exported"], float(s["graphs_built"]))
        graphs.add_metric(["cache"], float(s["graphs_reused"]))
        yield graphs
        yield GaugeMetricFamily(
            "lookaside_onnx_graphs_building", "Graphs being built now", value=s["graphs_building"]
        )
        yield CounterMetricFamily(
            "lookaside_onnx_graph_failures", "Graphs that failed to build", value=s["failures"]
        )


class ServiceMetrics:
    """Every metric of one app, registered in ``self.registry``; ``max_adapters`` bounds the
    ``adapter`` label's values (module docstring)."""

    def __init__(self, *, max_adapters: int = 1000) -> None:
        self.adapter_label = AdapterLabels(max_adapters)
        """Maps an adapter name to its ``adapter`` label (every adapter-labelled metric uses it)."""
        cap = self.adapter_label
        self._render_lock = threading.Lock()
        self._rendered: tuple[float, bytes] | None = None
        self.renders = 0
        """Renders done by :meth:`render_cached` (tests count them)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._add_request_metrics(r, cap)
        self.queue_wait = Histogram(
            "lookaside_queue_wait_seconds", "Submit to batch start", buckets=_LATENCY, registry=r
        )
        self.featurize = Histogram(
            "lookaside_featurize_seconds", "Decode + features", buckets=_LATENCY, registry=r
        )
        self.forward = Histogram(
            "lookaside_forward_seconds", "One batch's forward", buckets=_LATENCY, registry=r
        )
        self.batch_rows = Histogram(
            "lookaside_batch_rows", "Rows per batch", buckets=_SIZES, registry=r
        )
        self.batch_adapters = Histogram(
            "lookaside_batch_adapters", "Distinct adapters per batch", buckets=_SIZES, registry=r
        )
        self.batch_failures = Counter(
            "lookaside_batch_failures", "Forwards that raised", registry=r
        )
        self.batch_tokens = Histogram(
            "lookaside_batch_tokens",
            "Patch tokens per forward (rows x tokens per row)",
            buckets=_TOKENS,
            registry=r,
        )
        self.engine_stalled = Gauge(
            "lookaside_engine_stalled",
            "1 while engine work has run longer than engine_stall_s",
            registry=r,
        )
        self.engine_stalls = Counter(
            "lookaside_engine_stalls", "Stalls detected by the engine watchdog", registry=r
        )
        self._add_residency_metrics(r, cap)
        self._add_stream_metrics(r, cap)
        r.register(_CudaMemory())
        # the process's CPU, memory, open files and start time; the interpreter's version and
        # garbage collections (what prometheus_client puts on its default registry)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._build = _BuildInfo()
        r.register(self._build)
        self._tiers = TierCollector()
        r.register(self._tiers)

    def _add_request_metrics(self, r: CollectorRegistry, cap: AdapterLabels) -> None:
        """The per-request counters and latencies (part of ``__init__``)."""
        self.requests = CappedByAdapter(
            Counter(
                "lookaside_requests",
                "Answers by adapter, route and HTTP status",
                ["adapter", "route", "status"],
                registry=r,
            ),
            cap,
        )
        self.request_seconds = Histogram(
            "lookaside_request_seconds", "Total latency", ["route"], buckets=_LATENCY, registry=r
        )
        self.adapter_request_seconds = CappedByAdapter(
            Histogram(
                "lookaside_adapter_request_seconds",
                "Total latency of the requests naming this adapter (each adapter of a request)",
                ["adapter"],
                buckets=_LATENCY,
                registry=r,
            ),
            cap,
        )

    def _add_residency_metrics(self, r: CollectorRegistry, cap: AdapterLabels) -> None:
        """The queue and adapter residency gauges and counters (part of ``__init__``)."""
        self.queue_depth = Gauge("lookaside_queue_depth", "Jobs waiting", registry=r)
        self.adapters_resident = Gauge(
            "lookaside_adapters_resident", "Adapter versions on the device", registry=r
        )
        self.adapters_in_store = Gauge(
            "lookaside_adapters_in_store", "Adapter names in the store", registry=r
        )
        self.adapter_load_seconds = Histogram(
            "lookaside_adapter_load_seconds",
            "Time to load an adapter version into the bank, by the tier it was read from",
            ["tier"],
            buckets=_LATENCY,
            registry=r,
        )
        for tier in ("host", "disk"):  # both series from the start (rate() of a new one is empty)
            self.adapter_load_seconds.labels(tier=tier)
        self.adapter_evictions = CappedByAdapter(
            Counter(
                "lookaside_adapter_evictions",
                "Evictions by the residency policy",
                ["adapter"],
                registry=r,
            ),
            cap,
        )
        self.adapter_load_failures = CappedByAdapter(
            Counter(
                "lookaside_adapter_load_failures",
                "Adapter loads that failed",
                ["adapter"],
                registry=r,
            ),
            cap,
        )

    def _add_stream_metrics(self, r: CollectorRegistry, cap: AdapterLabels) -> None:
        """The live-streaming (``GET /stream``) metrics (part of ``__init__``)."""
        self.stream_sessions = Gauge(
            "lookaside_stream_sessions", "Live stream sessions (opening ones included)", registry=r
        )
        self.stream_closed = Counter(
            "lookaside_stream_sessions_closed",
            "Stream sessions ended, by close code (client: the client left)",
            ["code"],
            registry=r,
        )
        self.stream_windows = CappedByAdapter(
            Counter(
                "lookaside_stream_windows",
                "Streamed windows answered, per adapter",
                ["adapter"],
                registry=r,
            ),
            cap,
        )
        self.stream_dropped = Counter(
            "lookaside_stream_dropped_windows",
            "Streamed windows answered as dropped, by reason",
            ["reason"],
            registry=r,
        )
        self.stream_lag = Histogram(
            "lookaside_stream_lag_seconds",
            "A window's last sample received -> its message sent",
            buckets=_LAG,
            registry=r,
        )
        self.stream_audio_seconds = Counter(
            "lookaside_stream_audio_seconds", "Audio received by stream sessions", registry=r
        )

    def set_build_info(
        self, *, version: str, backbone: str, fingerprint: str, device: str, dtype: str, engine: str
    ) -> None:
        """``lookaside_build_info{version,backbone,fingerprint,device,dtype,engine} 1``."""
        self._build.labels = {
            "version": version,
            "backbone": backbone,
            "fingerprint": fingerprint,
            "device": device,
            "dtype": dtype,
            "engine": engine,
        }

    @property
    def build_info_set(self) -> bool:
        """Whether :meth:`set_build_info` has run (the series exists only from then on)."""
        return self._build.labels is not None

    # -- RegistryEvents (service.registry calls these; adapter names are the label values) -----
    def watch_onnx(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the ONNX Runtime engine's counters (``OrtFeatures.stats``) at each scrape."""
        self.registry.register(_OnnxRuntime(stats))

    def watch_tiers(self, stats: Callable[[], Mapping[str, TierStats]]) -> None:
        """Export ``lookaside_adapter_tier_*{tier}`` from ``stats()`` (per tier name: ``device``,
        ``host``) at each scrape; a later call replaces the source. A ``stats`` that raises
        leaves those series out of that scrape (logged), never fails ``/metrics``."""
        self._tiers.watch(stats)

    def adapter_loaded(self, name: str, version: int, seconds: float, tier: str = "disk") -> None:
        """``name@version`` became resident after ``seconds``, read from ``tier`` (``host``: the
        host tier, a copy; ``disk``: read + validate + copy). Labelled by tier, not by name: a
        histogram per adapter name was most of the metrics' memory."""
        self.safe(lambda: self.adapter_load_seconds.labels(tier=tier).observe(seconds))

    def adapter_load_failed(self, name: str, version: int, reason: str) -> None:
        """A load of ``name@version`` failed."""
        self.safe(lambda: self.adapter_load_failures.labels(adapter=name).inc())

    def adapter_evicted(self, name: str, version: int) -> None:
        """``name@version`` was unloaded to make room."""
        self.safe(lambda: self.adapter_evictions.labels(adapter=name).inc())

    def render(self) -> bytes:
        """The exposition text of every metric of this app."""
        return generate_latest(self.registry)

    def render_cached(self, max_age_s: float) -> bytes:
        """:meth:`render`, reused for ``max_age_s``: rendering costs milliseconds of GIL-holding
        Python, so a client scraping without pause would otherwise take half the process;
        Prometheus scrapes every few seconds and always gets a fresh answer. Any thread."""
        with self._render_lock:
            now = time.monotonic()
            if self._rendered is None or now - self._rendered[0] >= max_age_s:
                self._rendered = (now, self.render())
                self.renders += 1
            return self._rendered[1]

    @staticmethod
    def safe(record: Callable[[], object]) -> None:
        """Run one recording call; a metrics error is logged, never raised into a request."""
        try:
            record()
        except Exception:  # metrics must never fail a request (LitServe's callback runner)
            log.exception("recording a metric failed")
