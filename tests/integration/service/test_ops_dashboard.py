"""The Grafana dashboard and docs/service.md's example queries ask only for what the server
exports: every PromQL expression's metric names are among the names a real app's ``GET /metrics``
shows after classify traffic (histogram series with their ``_bucket`` / ``_sum`` / ``_count``), and
the per-adapter latency the dashboard plots counts a multi-adapter request under each adapter."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lookaside.backbone import VisionTransformer
from tests.integration.service.svc_support import (
    encode,
    make_checkpoint,
    put_in_store,
    serve,
    settings,
)

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "lookaside.json"
SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
    "info": ("_info",),
}
PROMETHEUS_OWN = {"up"}
"""Series Prometheus adds to every scrape itself."""
ONLY_ON_CUDA = {"lookaside_cuda_memory_allocated_bytes", "lookaside_cuda_memory_reserved_bytes"}
"""Exported only where CUDA is present (checked against service/metrics.py below)."""
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label
    matchers, ranges, Grafana variables, groupings and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        if expr[match.end() :].lstrip().startswith("(") or word in _KEYWORDS:
            continue  # a function or an operator
        names.add(word)
    return names


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def scrape_after_traffic(store: Path, backbone: VisionTransformer) -> str:
    put_in_store(store, make_checkpoint(backbone, "dogs", method="lora", seed=1))
    put_in_store(store, make_checkpoint(backbone, "rain", method="bottleneck", seed=2))
    clip = encode(1.5, seed=4)

    async def run() -> str:
        async with serve(settings(store), backbone=backbone) as (_, client):
            statuses = [
                (
                    await client.post(
                        f"/classify?adapter={adapter}",
                        content=clip,
                        headers={"Content-Type": "audio/wav"},
                    )
                ).status_code
                for adapter in ("dogs", "dogs,rain", "rain", "nosuch")
            ]
            assert statuses == [200, 200, 200, 404]
            await client.get("/healthz")
            return (await client.get("/metrics")).text

    return asyncio.run(run())


def documented_queries() -> list[str]:
    """The PromQL column of docs/service.md's Queries table."""
    text = (ROOT / "docs" / "service.md").read_text()
    section = text[text.index("### Queries") :]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [q for row in rows[2:] for q in re.findall(r"`([^`]+)`", row[1])]


def test_every_dashboard_and_docs_query_reads_metrics_the_server_exports(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 12
    documented = documented_queries()
    assert len(documented) >= 10
    exprs += documented
    names = exported(scrape_after_traffic(tmp_path / "store", svc_backbone))
    source = (ROOT / "service" / "metrics.py").read_text()
    for name in ONLY_ON_CUDA:
        assert f'"{name}"' in source
    allowed = names | PROMETHEUS_OWN | ONLY_ON_CUDA
    for expr in exprs:
        used = metric_names(expr)
        assert used, f"no metric in {expr!r}"
        assert used <= allowed, f"{expr!r} reads {sorted(used - allowed)}, not exported"
    read = set().union(*(metric_names(e) for e in exprs))
    # the panels the dashboard promises
    for name in (
        "lookaside_adapter_request_seconds_bucket",
        "lookaside_requests_total",
        "lookaside_batch_rows_bucket",
        "lookaside_batch_adapters_sum",
        "lookaside_queue_depth",
        "lookaside_adapters_resident",
        "lookaside_adapter_evictions_total",
        "lookaside_adapter_load_seconds_count",
        "lookaside_engine_stalled",
        "process_resident_memory_bytes",
        "lookaside_build_info",
    ):
        assert name in read, name


def test_metric_names_of_an_expression() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, adapter) (rate(x_bucket{route="/a{b}"}'
        "[$__rate_interval]))) / on (job) group_left up and y offset 5m"
    )
    assert metric_names(expr) == {"x_bucket", "up", "y"}


def test_per_adapter_latency_counts_each_adapter_of_a_request(
    tmp_path: Path, svc_backbone: VisionTransformer
) -> None:
    text = scrape_after_traffic(tmp_path / "store", svc_backbone)
    counts = {
        s.labels["adapter"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "lookaside_adapter_request_seconds_count"
    }
    # dogs, dogs+rain, rain answered; the unknown adapter resolved nothing
    assert counts == {"dogs": 2.0, "rain": 2.0}
