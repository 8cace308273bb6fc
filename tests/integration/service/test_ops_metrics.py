"""``GET /metrics`` of a real app, parsed with prometheus_client's own parser: the route label of
pages, static files and the docs is their route or mount (never the URL), the process and Python
collectors are on the app's registry, and ``lookaside_build_info`` says what ``GET /info`` says."""

from __future__ import annotations

import asyncio
import os
import platform
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.app import create_app
from tests.integration.service.svc_support import serve, settings

VISITS = [
    ("/", 200, "/"),
    ("/static/style.css", 200, "/static"),
    ("/static/js/main.js", 200, "/static"),
    ("/static/no-such-file.js", 404, "/static"),
    ("/examples", 200, "/examples"),
    ("/docs", 200, "/docs"),
    ("/redoc", 200, "/redoc"),
    ("/docs/assets/swagger-ui.css", 200, "/docs/assets"),
    ("/openapi.json", 200, "/openapi.json"),
    ("/adapters/nosuch", 404, "/adapters/{name}"),
    ("/no/such/page", 404, "unmatched"),
    ("/info", 200, "/info"),
]
"""(URL, its status, the route label it must be counted under)."""


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_pages_static_files_and_docs_are_counted_under_their_route(tmp_path: Path) -> None:
    async def run() -> tuple[dict[str, httpx.Response], str]:
        async with serve(settings(tmp_path / "store")) as (_, client):
            answers = {url: await client.get(url) for url, _, _ in VISITS}
            return answers, (await client.get("/metrics")).text

    answers, text = asyncio.run(run())
    for url, status, _ in VISITS:
        assert answers[url].status_code == status, url
    counted = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in samples(text)
        if s.name == "lookaside_requests_total"
    }
    want: dict[tuple[str, str], float] = {}
    for _, status, route in VISITS:
        want[(route, str(status))] = want.get((route, str(status)), 0.0) + 1.0
    assert counted == want
    # the raw URLs never became label values
    assert not any("style.css" in route or "nosuch" in route for route, _ in counted)


def test_process_and_python_collectors_are_on_the_apps_registry(tmp_path: Path) -> None:
    async def run() -> str:
        async with serve(settings(tmp_path / "store")) as (_, client):
            return (await client.get("/metrics")).text

    by_name = {s.name: s for s in samples(asyncio.run(run()))}
    python = by_name["python_info"]
    assert python.labels["version"] == platform.python_version()
    assert python.labels["implementation"] == platform.python_implementation()
    assert any(name.startswith("python_gc_collections") for name in by_name)
    # process_* read /proc/self: compare with what the kernel says about this process
    with open("/proc/self/statm") as f:
        rss_now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    rss = by_name["process_resident_memory_bytes"].value
    assert 0.5 * rss_now < rss < 2.0 * rss_now, (rss, rss_now)
    assert by_name["process_cpu_seconds_total"].value > 0
    assert abs(by_name["process_open_fds"].value - len(os.listdir("/proc/self/fd"))) <= 16


def test_build_info_says_what_info_says_once_the_backbone_is_loaded(tmp_path: Path) -> None:
    before = create_app(settings(tmp_path / "a"))  # no lifespan run: nothing loaded

    async def run() -> tuple[str, dict[str, str], str]:
        transport = httpx.ASGITransport(app=before)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            unloaded = (await client.get("/metrics")).text
        async with serve(settings(tmp_path / "b")) as (_, client):
            info = (await client.get("/info")).json()
            return unloaded, info, (await client.get("/metrics")).text

    unloaded, info, text = asyncio.run(run())
    assert not [s for s in samples(unloaded) if s.name == "lookaside_build_info"]
    [build] = [s for s in samples(text) if s.name == "lookaside_build_info"]
    assert build.value == 1.0
    name, _, fingerprint = info["backbone"].partition("@")
    assert build.labels == {
        "version": info["version"],
        "backbone": name,
        "fingerprint": fingerprint,
        "device": info["device"],
        "dtype": info["dtype"],
        "engine": info["engine"],
    }
