"""The bound on the ``adapter`` label, load seconds by tier, and the tier collector, read back
from the text exposition (what Prometheus sees), with exact values."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import ServiceMetrics
from service.metrics_tiers import OTHER, AdapterLabels
from service.registry import RegistryEvents
from service.tiers.host_cache import TierStats

Labels = tuple[tuple[str, str], ...]


def samples(metrics: ServiceMetrics, name: str) -> dict[Labels, float]:
    """Every sample called ``name`` in a fresh render, by its sorted labels."""
    text = metrics.render().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def by_adapter(metrics: ServiceMetrics, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples(metrics, name).items():
        adapter = dict(labels)["adapter"]
        out[adapter] = out.get(adapter, 0.0) + value
    return out


def test_first_names_own_series_later_ones_count_under_other() -> None:
    metrics = ServiceMetrics(max_adapters=3)
    names = [f"a{i}" for i in range(7)]
    for i, name in enumerate(names):  # a_i answered i + 1 times
        for _ in range(i + 1):
            metrics.requests.labels(adapter=name, route="/classify", status="200").inc()
            metrics.adapter_request_seconds.labels(adapter=name).observe(0.01)
    metrics.requests.labels(adapter="", route="/classify", status="404").inc()
    requests = by_adapter(metrics, "lookaside_requests_total")
    assert requests == {"a0": 1.0, "a1": 2.0, "a2": 3.0, OTHER: 4 + 5 + 6 + 7.0, "": 1.0}
    assert sum(requests.values()) == sum(range(1, 8)) + 1  # nothing lost to the cap
    seconds = by_adapter(metrics, "lookaside_adapter_request_seconds_count")
    assert seconds == {"a0": 1.0, "a1": 2.0, "a2": 3.0, OTHER: 22.0}
    assert len(metrics.adapter_label) == 3


def test_the_cap_is_shared_by_every_adapter_labelled_metric() -> None:
    metrics = ServiceMetrics(max_adapters=2)
    metrics.stream_windows.labels(adapter="first").inc()  # streams count toward the cap too
    metrics.adapter_evicted("second", 1)
    metrics.adapter_evicted("third", 4)
    metrics.adapter_load_failed("first", 2, "bad")
    metrics.adapter_load_failed("fourth", 1, "bad")
    metrics.adapter_load_failed("fifth", 1, "bad")
    metrics.requests.labels(adapter="second", route="/classify", status="200").inc()
    metrics.requests.labels(adapter="third", route="/classify", status="200").inc()
    assert by_adapter(metrics, "lookaside_stream_windows_total") == {"first": 1.0}
    assert by_adapter(metrics, "lookaside_adapter_evictions_total") == {"second": 1.0, OTHER: 1.0}
    assert by_adapter(metrics, "lookaside_adapter_load_failures_total") == {
        "first": 1.0,
        OTHER: 2.0,
    }
    assert by_adapter(metrics, "lookaside_requests_total") == {"second": 1.0, OTHER: 1.0}


def test_series_stay_bounded_however_many_names_are_served() -> None:
    metrics = ServiceMetrics(max_adapters=10)
    for i in range(5000):
        metrics.requests.labels(adapter=f"n{i}", route="/classify", status="200").inc()
        metrics.adapter_loaded(f"n{i}", 1, 0.002)
    requests = by_adapter(metrics, "lookaside_requests_total")
    assert len(requests) == 11
    assert requests[OTHER] == 4990.0
    assert sum(requests.values()) == 5000.0
    # the underlying metrics hold as many children as the exposition shows
    assert len(metrics.requests.metric._metrics) == 11
    assert len(metrics.adapter_load_seconds._metrics) == 2  # host, disk


def test_zero_max_adapters_counts_every_name_as_other_and_empty_stays_empty() -> None:
    cap = AdapterLabels(0)
    assert [cap("a"), cap("b"), cap("")] == [OTHER, OTHER, ""]
    assert len(cap) == 0
    with pytest.raises(ValueError, match="max_adapters"):
        AdapterLabels(-1)


def test_the_empty_label_does_not_take_a_place() -> None:
    cap = AdapterLabels(1)
    assert cap("") == ""
    assert cap("x") == "x"
    assert cap("y") == OTHER
    assert cap("x") == "x"  # a name keeps its series for good


def test_concurrent_first_sightings_admit_exactly_max_names() -> None:
    cap = AdapterLabels(50)
    barrier = threading.Barrier(8)
    seen: list[dict[str, str]] = [{} for _ in range(8)]

    def label(k: int) -> None:
        barrier.wait()
        for i in range(400):
            name = f"n{(i * 7 + k * 13) % 200}"
            seen[k][name] = cap(name)

    threads = [threading.Thread(target=label, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(cap) == 50
    merged: dict[str, set[str]] = {}
    for answers in seen:
        for name, value in answers.items():
            merged.setdefault(name, set()).add(value)
    # every name got one answer from every thread, and exactly 50 names are their own label
    assert all(len(values) == 1 for values in merged.values())
    own = {name for name, values in merged.items() if values == {name}}
    assert len(own) == 50
    assert all(values == {OTHER} for name, values in merged.items() if name not in own)


def test_positional_label_values_are_refused() -> None:
    metrics = ServiceMetrics(max_adapters=1)
    with pytest.raises(TypeError):
        metrics.requests.labels("a", "/classify", "200")  # type: ignore[call-arg]


def test_load_seconds_are_labelled_by_tier_not_by_adapter() -> None:
    metrics = ServiceMetrics()
    fresh = samples(metrics, "lookaside_adapter_load_seconds_count")
    assert fresh == {(("tier", "disk"),): 0.0, (("tier", "host"),): 0.0}  # both from the start
    metrics.adapter_loaded("a", 1, 0.5, tier="host")
    metrics.adapter_loaded("b", 1, 0.25)  # the default: read from disk
    metrics.adapter_loaded("c", 2, 0.125, tier="disk")
    counts = samples(metrics, "lookaside_adapter_load_seconds_count")
    sums = samples(metrics, "lookaside_adapter_load_seconds_sum")
    assert counts == {(("tier", "disk"),): 2.0, (("tier", "host"),): 1.0}
    assert sums == {(("tier", "disk"),): 0.375, (("tier", "host"),): 0.5}


def test_service_metrics_is_the_registry_events_observer() -> None:
    events: RegistryEvents = ServiceMetrics()  # mypy checks the signatures
    events.adapter_loaded("a", 1, 0.1, tier="host")
    assert isinstance(events, ServiceMetrics)


def _stats(hits: int, misses: int, bypass: int, evictions: int, nbytes: int) -> TierStats:
    return TierStats(
        hits=hits,
        misses=misses,
        bypass=bypass,
        evictions=evictions,
        bytes=nbytes,
        inflight=nbytes // 4,
        budget=nbytes * 2,
        entries=hits % 7,
    )


def tier_values(metrics: ServiceMetrics) -> dict[str, dict[str, float]]:
    """``{sample name: {tier: value}}`` of every ``lookaside_adapter_tier_*`` sample."""
    out: dict[str, dict[str, float]] = {}
    text = metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("lookaside_adapter_tier_"):
                out.setdefault(s.name, {})[s.labels["tier"]] = s.value
    return out


def test_tier_collector_exports_each_tier_from_its_snapshot() -> None:
    metrics = ServiceMetrics()
    assert tier_values(metrics) == {}  # nothing until watched
    snapshot: dict[str, TierStats] = {
        "device": _stats(40, 9, 0, 3, 1 << 20),
        "host": _stats(8, 1, 2, 5, 4096),
    }
    metrics.watch_tiers(lambda: snapshot)
    assert tier_values(metrics) == {
        "lookaside_adapter_tier_hits_total": {"device": 40.0, "host": 8.0},
        "lookaside_adapter_tier_misses_total": {"device": 9.0, "host": 1.0},
        "lookaside_adapter_tier_evictions_total": {"device": 3.0, "host": 5.0},
        "lookaside_adapter_tier_bypass_total": {"device": 0.0, "host": 2.0},
        "lookaside_adapter_tier_bytes": {"device": float(1 << 20), "host": 4096.0},
        "lookaside_adapter_tier_inflight_bytes": {"device": float(1 << 18), "host": 1024.0},
        "lookaside_adapter_tier_budget_bytes": {"device": float(1 << 21), "host": 8192.0},
        "lookaside_adapter_tier_entries": {"device": 5.0, "host": 1.0},
    }
    snapshot["host"] = _stats(9, 1, 2, 6, 0)  # read again at each scrape
    values = tier_values(metrics)
    assert values["lookaside_adapter_tier_hits_total"]["host"] == 9.0
    assert values["lookaside_adapter_tier_bytes"]["host"] == 0.0


class _Flaky:
    """A stats source that raises while ``failing``."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    def __call__(self) -> Mapping[str, TierStats]:
        self.calls += 1
        if self.failing:
            raise RuntimeError("registry gone")
        return {"host": _stats(1, 2, 3, 4, 5)}


def test_a_raising_stats_source_skips_the_tier_series_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ServiceMetrics()
    metrics.queue_depth.set(3)
    source = _Flaky()
    metrics.watch_tiers(source)
    with caplog.at_level(logging.ERROR, logger="service.metrics"):
        for _ in range(3):
            assert tier_values(metrics) == {}
            assert samples(metrics, "lookaside_queue_depth") == {(): 3.0}  # the rest renders
    assert source.calls == 6
    failures = [r for r in caplog.records if "adapter tiers" in r.getMessage()]
    assert len(failures) == 1  # logged once, not at every scrape
    source.failing = False
    assert tier_values(metrics)["lookaside_adapter_tier_bypass_total"] == {"host": 3.0}


def test_a_malformed_snapshot_does_not_break_the_render() -> None:
    metrics = ServiceMetrics()
    metrics.watch_tiers(lambda: {"host": object()})  # type: ignore[dict-item]
    assert tier_values(metrics) == {}
    assert "lookaside_queue_depth" in metrics.render().decode()
