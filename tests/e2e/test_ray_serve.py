"""Lookaside on a real local Ray cluster (127.0.0.1), over HTTP through Ray Serve's proxy.

One Ray instance for the module; each test deploys the application (tiny backbone), drives it
with real HTTP clients on threads, and checks every answer against the library-only reference of
the version the answer names (:func:`reference_scores`): a wrong adapter or version cannot pass.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from lookaside.checkpoint import AdapterCheckpoint
from service.ray.app import build_application
from service.ray.proxy import proxy_environment
from service.ray.wire import APP_NAME, INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT
from tests.integration.service.svc_support import (
    ADMIN,
    checkpoint_bytes,
    encode,
    expected_top,
    make_checkpoint,
    put_in_store,
    reference_scores,
    settings,
    tiny,
)
from tests.live_server import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

AUTH = {"Authorization": f"Bearer {ADMIN}"}
WAV = {"Content-Type": "audio/wav"}
CLIP = encode(1.0)
TOP_K = 5


PROXY_BUDGET = 48 * 1024 * 1024
"""Body bytes in flight in the module's Serve proxy (the deployments keep their own limits)."""
METRICS_PORT = free_port()
"""Ray's metrics export port of the module's cluster (the model replicas' own metrics)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray instance with Serve's proxy on a free port; its base URL."""
    port = free_port()
    limits = settings(tmp_path_factory.mktemp("proxy"), max_inflight_body_bytes=PROXY_BUDGET)
    saved = dict(os.environ)
    os.environ.update(proxy_environment(limits))  # what lookaside-serve --ray does
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _metrics_export_port=METRICS_PORT,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


class Deployment:
    """The application on the cluster, with its store and the references of every version."""

    def __init__(self, url: str, tmp: Path, **overrides: Any) -> None:
        self.url = url
        self.store = tmp / "store"
        token = tmp / "admin-token"
        token.write_text(ADMIN)
        self.overrides = {
            "admin_token": "",
            "admin_token_file": token,
            "ray": True,
            "ray_replicas": 2,
            "ray_sync_s": 0.2,
            "max_wait_ms": 5.0,
            **overrides,
        }
        self.backbone = tiny()
        self.expected: dict[tuple[str, int], dict[str, float]] = {}

    def add(self, ckpt: AdapterCheckpoint, *, activate: bool = True) -> None:
        put_in_store(self.store, ckpt, activate=activate)
        self.remember(ckpt)

    def remember(self, ckpt: AdapterCheckpoint) -> None:
        scores = reference_scores(self.backbone, ckpt, CLIP)
        key = (ckpt.manifest.name, ckpt.manifest.version)
        self.expected[key] = expected_top(scores, ckpt.manifest.labels, TOP_K)

    def deploy(self, autoscaling: dict[str, Any] | None = None, **overrides: Any) -> None:
        cfg = settings(self.store, **{**self.overrides, **overrides})
        serve.run(build_application(cfg, autoscaling=autoscaling), name=APP_NAME, route_prefix="/")

    def running(self) -> int:
        """Model replicas Ray Serve reports RUNNING."""
        status = serve.status().applications[APP_NAME].deployments[MODEL_DEPLOYMENT]
        return int(status.replica_states.get("RUNNING", 0))

    def wait_running(self, want: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.running() != want:
            assert time.monotonic() < deadline, f"{self.running()} replicas, not {want}"
            time.sleep(0.5)

    def check(self, result: dict[str, Any], tol: float = 1e-5) -> tuple[str, int]:
        """One adapter's result equals the reference of the version it names."""
        key = (result["adapter"], int(result["version"]))
        got = {item["label"]: item["score"] for item in result["labels"]}
        want = self.expected[key]
        assert got.keys() == want.keys(), (key, got, want)
        for label, score in want.items():
            assert got[label] == pytest.approx(score, abs=tol), (key, label)
        return key

    def classify(self, client: httpx.Client, refs: str) -> httpx.Response:
        return client.post(
            f"{self.url}/classify",
            params={"adapter": refs, "top_k": TOP_K},
            content=CLIP,
            headers=WAV,
        )

    def loads(self) -> Counter[str]:
        """Adapter loads per name, summed over replicas (the ingress's /metrics)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        out: Counter[str] = Counter()
        for adapter, value in re.findall(
            r'^lookaside_replica_adapter_loads_total\{adapter="([^"]+)",[^}]*\} (\S+)$', text, re.M
        ):
            out[adapter] += int(float(value))
        return out

    def replicas(self, want: int, timeout: float = 90.0) -> dict[str, dict[str, Any]]:
        """Replica id -> its ``whoami`` (pid, resident ids), once ``want`` replicas answered."""
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, APP_NAME)
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < want and time.monotonic() < deadline:
            try:
                info = handle.whoami.remote().result(timeout_s=30)
            except Exception:  # a replica just killed, not yet replaced: ask again
                time.sleep(0.5)
                continue
            seen[info["replica"]] = info
        assert len(seen) >= want, seen
        return seen


@pytest.fixture
def deployment(cluster: str, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(**overrides: Any) -> Deployment:
        d = Deployment(cluster, tmp_path, **overrides)
        made.append(d)
        return d

    yield make
    serve.delete(APP_NAME)


def _exported(
    name: str, by: str = "adapter", deployment: str = MODEL_DEPLOYMENT, **only: str
) -> dict[Any, float]:
    """Samples of ``name`` of ``deployment`` on Ray's metrics export (those whose tags include
    ``only``): {replica: value}, or {(replica, <by>): value} when they carry the tag ``by``."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30).text
    out: dict[Any, float] = {}
    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if tags.get("deployment") != deployment or any(tags.get(k) != v for k, v in only.items()):
            continue
        key = (tags["replica"], tags[by]) if by in tags else tags["replica"]
        out[key] = out.get(key, 0.0) + float(value)
    return out


class Traffic:
    """Threads classifying ``refs`` round-robin until :meth:`stop`: (time sent, response)."""

    def __init__(self, d: Deployment, refs: list[str], threads: int = 4) -> None:
        self.d = d
        self.refs = refs
        self.out: list[tuple[float, httpx.Response]] = []
        self._stop = threading.Event()
        self._workers = [
            threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)
        ]
        for w in self._workers:
            w.start()

    def _run(self, offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = offset
            while not self._stop.is_set():
                sent = time.monotonic()
                self.out.append((sent, self.d.classify(client, self.refs[i % len(self.refs)])))
                i += 1

    def stop(self) -> list[tuple[float, httpx.Response]]:
        self._stop.set()
        for w in self._workers:
            w.join(60)
        return self.out


def _all_correct(d: Deployment, out: list[tuple[float, httpx.Response]]) -> None:
    """Every answer 200, and every adapter's result equal to its version's reference."""
    for _, response in out:
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            d.check(result)


def test_affinity_mixing_and_multi_adapter_requests(deployment: Callable[..., Deployment]) -> None:
    """2 replicas, 8 adapters, at most 3 resident per replica. Six hot adapters fit the 6 slots:
    with affinity each loads about once (asserted: at most 2 loads each, 8 in all, over 66
    requests; routing without affinity sends each adapter to both replicas, where 3 slots for 6
    adapters thrash: about one load per two requests). Ray places a new adapter on the replica
    with the fewest adapters *as last reported* (pushed every 0.1 s), so the first request of
    each is paced here; docs/ray.md says what a burst of new adapters does. Then requests naming
    2-3 of all 8 adapters fan out and gather, every answer equal to its version's reference."""
    d = deployment(ray_adapters_per_replica=3)
    for i in range(8):
        d.add(make_checkpoint(d.backbone, f"a{i}", seed=i))
    d.deploy()
    hot = [f"a{i}" for i in range(6)]
    with httpx.Client(timeout=60) as client:
        for name in hot:  # first touches, paced so the router learns each placement
            response = d.classify(client, name)
            assert response.status_code == 200, response.text
            d.check(response.json()["results"][0])
            time.sleep(1.0)
        for i in range(60):
            response = d.classify(client, hot[(i * 5) % 6])
            assert response.status_code == 200, response.text
            d.check(response.json()["results"][0])
    loads = d.loads()
    assert set(loads) == set(hot), loads
    assert max(loads.values()) <= 2, loads
    assert sum(loads.values()) <= 8, loads

    combos = ["a6,a1", "a7,a2,a4", "a0,a6", "a3,a7,a5", "a1,a2,a6"]
    traffic = Traffic(d, combos)
    time.sleep(6.0)
    out = traffic.stop()
    assert len(out) >= 10
    _all_correct(d, out)
    assert all(len(r.json()["results"]) in (2, 3) for _, r in out)

    # each replica's own metrics (its batches, its loads by tier) reach Ray's metrics export
    replicas = set(d.replicas(2))
    deadline = time.monotonic() + 60
    while True:
        batches = _exported("ray_lookaside_batch_rows_count")
        loads = _exported("ray_lookaside_adapter_load_seconds_count", by="tier")
        loaded = sum(v for (_, tier), v in loads.items() if tier in ("host", "disk"))
        if set(batches) == replicas and loaded >= len(hot):
            break
        assert time.monotonic() < deadline, (replicas, batches, loads)
        time.sleep(2.0)
    assert all(value > 0 for value in batches.values())


def test_live_swaps_and_rollbacks_reach_every_ingress(
    deployment: Callable[..., Deployment],
) -> None:
    """20 activations (uploads of new versions and rollbacks) during traffic through 2 ingress
    replicas: 0 errors, 0 misrouted answers, every answer on a version that was active while its
    request ran, and every request sent later than ``ray_sync_s`` + 1 s after a swap returned
    served by the version it made active (the journal's bound, with margin for this machine)."""
    d = deployment(ray_ingress_replicas=2)
    d.add(make_checkpoint(d.backbone, "other", seed=99))
    versions = [make_checkpoint(d.backbone, "s", seed=10 + v, version=v) for v in (1, 2, 3)]
    for ckpt in versions:
        d.add(ckpt, activate=ckpt.manifest.version == 1)
    d.deploy()
    traffic = Traffic(d, ["s", "other,s", "s"])
    history: list[tuple[float, int]] = [(0.0, 1)]  # (time the swap returned, active version)
    with httpx.Client(timeout=60) as admin:
        for step in range(20):
            if step % 5 == 4:  # an upload of a new version, activated at once
                ckpt = make_checkpoint(d.backbone, "s", seed=50 + step, version=1)
                manifest, weights = checkpoint_bytes(ckpt)
                r = admin.post(
                    f"{d.url}/adapters",
                    params={"activate": "true"},
                    files={"manifest": ("manifest.json", manifest), "weights": ("a", weights)},
                    headers=AUTH,
                )
                assert r.status_code == 201, r.text
                version = r.json()["version"]
                d.remember(make_checkpoint(d.backbone, "s", seed=50 + step, version=version))
            else:  # a swap to, or a rollback to, a stored version
                version = [1, 2, 3][(step * 2 + 1) % 3]
                r = admin.post(
                    f"{d.url}/adapters/s/activate", json={"version": version}, headers=AUTH
                )
                assert r.status_code == 200, r.text
            history.append((time.monotonic(), version))
            time.sleep(0.6)
    time.sleep(2.0)
    out = traffic.stop()
    bound = d.overrides["ray_sync_s"] + 1.0
    for sent, response in out:
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            name, version = d.check(result)
            if name == "s":
                # active when sent, unless a swap returned less than ``bound`` before (or after)
                settled = [v for t, v in history if t <= sent - bound][-1]
                recent = {v for t, v in history if t > sent - bound}
                assert version in {settled, *recent}, (sent, version, history)
    assert len(out) >= 40

    # both ingress replicas' request counts reach Ray's export (a scrape of /metrics through the
    # proxy sees one of them)
    deadline = time.monotonic() + 60
    while True:
        served = _exported(
            "ray_lookaside_requests_total",
            deployment=INGRESS_DEPLOYMENT,
            lookaside_route="/classify",
            status="200",
        )
        per_ingress: Counter[str] = Counter()
        for (replica, _adapter), n in served.items():
            per_ingress[replica] += int(n)
        names = sum(len(r.json()["results"]) for _, r in out)  # one count per adapter named
        if len(per_ingress) == 2 and sum(per_ingress.values()) >= names:
            break
        assert time.monotonic() < deadline, (per_ingress, names)
        time.sleep(2.0)

    # a deleted version leaves every replica that held it within the journal's bound
    gone = next(v for v in (1, 2, 3) if v != history[-1][1])
    assert any(f"s@{gone}" in info["resident"] for info in d.replicas(2).values())
    r = httpx.delete(f"{d.url}/adapters/s/versions/{gone}", headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    time.sleep(bound)
    for info in d.replicas(2).values():
        assert f"s@{gone}" not in info["resident"], info


def test_killed_replica_retried_or_503_never_wrong(deployment: Callable[..., Deployment]) -> None:
    """SIGKILL one of 2 replicas during traffic: Ray restarts it; every answer is either correct
    for its version or 503; most succeed, and traffic afterwards all succeeds."""
    d = deployment()
    for i in range(4):
        d.add(make_checkpoint(d.backbone, f"k{i}", seed=20 + i))
    d.deploy()
    pids = {replica: info["pid"] for replica, info in d.replicas(2).items()}
    traffic = Traffic(d, ["k0", "k1,k2", "k3", "k2"])
    time.sleep(2.0)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(8.0)
    out = traffic.stop()
    statuses = Counter(r.status_code for _, r in out)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 0.8 * len(out), statuses
    for _, response in out:
        if response.status_code == 200:
            for result in response.json()["results"]:
                d.check(result)
    after = d.replicas(2)
    assert victim not in {info["pid"] for info in after.values()}
    with httpx.Client(timeout=60) as client:
        for refs in ["k0", "k1,k2", "k3"] * 3:
            response = d.classify(client, refs)
            assert response.status_code == 200, response.text


def test_scale_up_and_down_during_traffic_drops_nothing(
    deployment: Callable[..., Deployment],
) -> None:
    """1 -> 2 -> 1 model replicas during traffic (Ray Serve's in-place update): every request
    answered 200 and correct; the replica scaled away drained what it had accepted."""
    d = deployment(ray_replicas=1)
    for i in range(3):
        d.add(make_checkpoint(d.backbone, f"c{i}", seed=30 + i))
    d.deploy()
    traffic = Traffic(d, ["c0", "c1,c2", "c2"])
    time.sleep(1.0)
    d.deploy(ray_replicas=2)
    assert len(d.replicas(2)) == 2
    time.sleep(2.0)
    d.deploy(ray_replicas=1)
    time.sleep(3.0)
    out = traffic.stop()
    assert len(out) >= 20
    _all_correct(d, out)


def test_autoscaling_by_ongoing_requests_up_and_down(
    deployment: Callable[..., Deployment],
) -> None:
    """``ray_max_replicas``: Ray Serve's autoscaler grows 1 replica to 2 under load (target 1
    ongoing call per replica) and back to 1 when idle, draining the one it removes: every
    request answered, and correct."""
    d = deployment(ray_replicas=1, ray_max_replicas=2, ray_target_ongoing_requests=1.0)
    for i in range(3):
        d.add(make_checkpoint(d.backbone, f"u{i}", seed=40 + i))
    d.deploy(
        autoscaling={
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2.0,
            "upscale_delay_s": 0.5,
            "downscale_delay_s": 3.0,
        }
    )
    assert d.running() == 1
    traffic = Traffic(d, ["u0", "u1,u2", "u2"], threads=6)
    try:
        d.wait_running(2)
    finally:
        out = traffic.stop()
    d.wait_running(1)
    assert len(out) >= 10
    _all_correct(d, out)


def test_onnxruntime_engine_on_the_replicas(
    deployment: Callable[..., Deployment], tmp_path: Path
) -> None:
    """``engine=onnxruntime`` on Ray: the replica exports its graph in the background (eager
    PyTorch meanwhile) and then serves on ONNX Runtime, answers equal to the reference (fp32,
    within 1e-4), counted on Ray's metrics export by runtime."""
    d = deployment(ray_replicas=1, engine="onnxruntime", ort_cache=tmp_path / "onnx")
    d.add(make_checkpoint(d.backbone, "o0", seed=60))
    d.add(make_checkpoint(d.backbone, "o1", seed=61))
    d.deploy()
    deadline = time.monotonic() + 240
    with httpx.Client(timeout=60) as client:
        while True:
            response = d.classify(client, "o0,o1")
            assert response.status_code == 200, response.text
            for result in response.json()["results"]:
                d.check(result, tol=1e-4)
            passes = _exported("ray_lookaside_onnx_batches_total", by="runtime")
            if any(runtime == "onnxruntime" and n > 0 for (_, runtime), n in passes.items()):
                break
            assert time.monotonic() < deadline, passes
            time.sleep(1.0)


def test_the_proxy_bounds_a_body_before_the_app_reads_it(
    deployment: Callable[..., Deployment],
) -> None:
    """A 1 GiB chunked body: Ray's proxy runs the same body limits as one process, so it refuses
    past its in-flight budget (413 naming it) instead of buffering ahead of the app; its memory
    grows by less than the budget plus slack (unbounded, it grew 300 MB in under a second)."""
    psutil = pytest.importorskip("psutil")
    d = deployment(ray_replicas=1)
    d.add(make_checkpoint(d.backbone, "b0", seed=70))
    d.deploy()
    (proxy,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "ProxyActor" in " ".join(p.info["cmdline"] or [])
    ]
    before = proxy.memory_info().rss

    def body() -> Iterator[bytes]:
        chunk = b"\0" * (1 << 20)
        for _ in range(1024):
            yield chunk

    r = httpx.post(
        f"{d.url}/classify", params={"adapter": "b0"}, content=body(), headers=WAV, timeout=120
    )
    assert r.status_code == 413, r.text
    assert "in-flight body budget" in r.json()["detail"], r.text
    assert proxy.memory_info().rss - before < PROXY_BUDGET + 64 * 1024 * 1024
    with httpx.Client(timeout=60) as client:  # and the next request is served as usual
        response = d.classify(client, "b0")
        assert response.status_code == 200, response.text
        d.check(response.json()["results"][0])
