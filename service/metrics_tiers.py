"""The adapter tiers' metrics, and the bound on the ``adapter`` label's values.

Adapter labels (:class:`AdapterLabels`): each adapter name costs kilobytes of metric objects
(its series in every adapter-labelled metric) and its share of every ``/metrics`` render, which
holds the GIL; and names grow with every adapter ever served, not with the residents. So every
metric labelled by ``adapter`` maps its name through one :class:`AdapterLabels`: the first
``max_adapters`` distinct names seen (by any of those metrics, since the process started) keep
their own series, every later name is counted under ``adapter="_other"`` (never a stored
adapter's name: names start with a lowercase letter or a digit), and ``""`` (no adapter
resolved) stays ``""``. Counts add up: the sum over ``adapter`` is the same as without the cap.

Tier series (:class:`TierCollector`, read at scrape time from cumulative snapshots, so nothing is
recorded on the request path), per ``tier`` (``device``, ``host``):

=============================================  ==================================================
``adapter_tier_hits_total{tier}``              lookups answered by the tier
``adapter_tier_misses_total{tier}``            lookups it could not answer
``adapter_tier_evictions_total{tier}``         entries it evicted for room
``adapter_tier_bypass_total{tier}``            items larger than its whole budget (never cached)
``adapter_tier_bytes{tier}``                   bytes of its entries (at most the budget)
``adapter_tier_inflight_bytes{tier}``          bytes evicted while still being copied
``adapter_tier_budget_bytes{tier}``            its budget
``adapter_tier_entries{tier}``                 entries (adapter versions) in it
=============================================  ==================================================

Threads: :class:`AdapterLabels` is called from any thread (one lock, O(1)); the collector runs on
the thread rendering ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.tiers.host_cache import TierStats

__all__ = ["OTHER", "AdapterLabels", "CappedByAdapter", "TierCollector"]

log = logging.getLogger("service.metrics")

OTHER = "_other"
"""The ``adapter`` label of every name past the first ``max_adapters``."""

M = TypeVar("M", Counter, Histogram)


class AdapterLabels:
    """Maps an adapter name to its ``adapter`` label value (module docstring). Any thread."""

    def __init__(self, max_adapters: int) -> None:
        if max_adapters < 0:
            raise ValueError(f"max_adapters must be >= 0, got {max_adapters}")
        self.max_adapters = max_adapters
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def __call__(self, name: str) -> str:
        """``name`` if it is among the first ``max_adapters`` names seen, else ``_other``."""
        if not name:
            return ""
        with self._lock:
            if name in self._names:
                return name
            if len(self._names) < self.max_adapters:
                self._names.add(name)
                return name
        return OTHER

    def __len__(self) -> int:
        """Names with their own series so far (at most ``max_adapters``)."""
        with self._lock:
            return len(self._names)


class CappedByAdapter(Generic[M]):
    """A labelled counter or histogram whose ``adapter`` label goes through an
    :class:`AdapterLabels`: ``labels(adapter=..., ...)`` as on the metric itself (keywords only,
    so the adapter's value cannot slip past the cap positionally)."""

    def __init__(self, metric: M, adapter_labels: AdapterLabels) -> None:
        self.metric: M = metric
        self._adapter_labels = adapter_labels

    def labels(self, **labelvalues: str) -> M:
        """The child series, with ``adapter`` mapped (absent label names raise as usual)."""
        if "adapter" in labelvalues:
            labelvalues["adapter"] = self._adapter_labels(labelvalues["adapter"])
        return self.metric.labels(**labelvalues)


_COUNTERS = (
    ("hits", "Lookups answered by the adapter tier"),
    ("misses", "Lookups the adapter tier could not answer"),
    ("evictions", "Entries the adapter tier evicted for room"),
    ("bypass", "Items larger than the adapter tier's whole budget (never cached)"),
)
_GAUGES = (
    ("bytes", "bytes", "Bytes of the adapter tier's entries"),
    ("inflight_bytes", "inflight", "Bytes evicted from the adapter tier while still being copied"),
    ("budget_bytes", "budget", "The adapter tier's budget in bytes"),
    ("entries", "entries", "Adapter versions in the tier"),
)


class TierCollector(Collector):
    """``lookaside_adapter_tier_*{tier}`` from ``stats()`` at each scrape (none until
    :meth:`watch`); a ``stats`` that raises skips these series for that scrape (logged once per
    run of failures), never the rest of ``/metrics``."""

    def __init__(self) -> None:
        self._stats: Callable[[], Mapping[str, TierStats]] | None = None
        self._failing = False

    def watch(self, stats: Callable[[], Mapping[str, TierStats]]) -> None:
        """Read the tiers from ``stats`` from now on (replacing an earlier one)."""
        self._stats = stats
        self._failing = False

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """The names, without calling ``stats`` (registration happens before it exists)."""
        return self._families({})

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats
        if stats is None:
            return iter(())
        try:
            families = list(self._families(stats()))
        except Exception:
            if not self._failing:
                log.exception("reading the adapter tiers' stats failed; their metrics are skipped")
            self._failing = True
            return iter(())
        self._failing = False
        return iter(families)

    @staticmethod
    def _families(
        tiers: Mapping[str, TierStats],
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for name, doc in _COUNTERS:
            counter = CounterMetricFamily(f"lookaside_adapter_tier_{name}", doc, labels=["tier"])
            for tier, s in tiers.items():
                counter.add_metric([tier], float(getattr(s, name)))
            yield counter
        for name, field, doc in _GAUGES:
            gauge = GaugeMetricFamily(f"lookaside_adapter_tier_{name}", doc, labels=["tier"])
            for tier, s in tiers.items():
                gauge.add_metric([tier], float(getattr(s, field)))
            yield gauge
