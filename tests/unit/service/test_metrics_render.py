"""``GET /metrics`` renders at most once per ``metrics_max_age_s``, however fast it is scraped
(counted in renders, not timed)."""

from __future__ import annotations

import threading

from service.metrics import ServiceMetrics


def test_scrapes_within_the_max_age_reuse_one_rendering() -> None:
    metrics = ServiceMetrics()
    first = metrics.render_cached(60.0)
    metrics.queue_depth.set(7)
    bodies = [metrics.render_cached(60.0) for _ in range(100)]
    assert metrics.renders == 1
    assert all(b == first for b in bodies)  # the cached text, not a fresh one
    assert b"lookaside_queue_depth 0.0" in first


def test_max_age_zero_renders_every_scrape_and_sees_new_values() -> None:
    metrics = ServiceMetrics()
    metrics.render_cached(0.0)
    metrics.queue_depth.set(7)
    assert b"lookaside_queue_depth 7.0" in metrics.render_cached(0.0)
    assert metrics.renders == 2


def test_concurrent_scrapers_share_one_rendering() -> None:
    metrics = ServiceMetrics()
    barrier = threading.Barrier(8)

    def scrape() -> None:
        barrier.wait()
        for _ in range(20):
            metrics.render_cached(60.0)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert metrics.renders == 1
