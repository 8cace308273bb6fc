"""AdapterRegistry with a fake engine: resolution, leases, LRU, pins, load on demand, hot swap,
failures, deletes under load."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterCheckpoint,
    ValidatedCheckpoint,
)
from lookaside.errors import AdapterNotFound, BankFull
from lookaside.features import FeatureConfig
from service.engine.watchdog import HEALTHY, EngineHealth
from service.errors import RequestTimeout
from service.registry import AdapterRegistry, AdapterUnavailable, parse_ref
from service.store import AdapterStore
from tests.support import randomise

T = TypeVar("T")
LABELS = ["dog", "rain", "siren"]


def make_upload(
    backbone: VisionTransformer, name: str, *, seed: int, rank: int = 2
) -> tuple[bytes, bytes]:
    """(manifest, weights) bytes of a small LoRA adapter with random weights."""
    bank = AdapterBank(backbone.cfg)
    bank.add("x@1", "lora", {"rank": rank, "alpha": 4.0}, HeadConfig(num_classes=len(LABELS)))
    randomise(bank, "x@1", seed=seed)
    ckpt = AdapterCheckpoint.from_bank(
        bank,
        "x@1",
        name=name,
        version=1,
        task="sounds",
        task_type="multiclass",
        labels=LABELS,
        features=FeatureConfig(),
        backbone=backbone,
    )
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "a"
        ckpt.save(target)
        return (target / MANIFEST_FILE).read_bytes(), (target / WEIGHTS_FILE).read_bytes()


class FakeEngine:
    """Records bank changes; loads can be held at a gate or made to fail."""

    def __init__(self, *, stack_capacity: int | None = None) -> None:
        self.bank: dict[str, AdapterCheckpoint] = {}
        self.log: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: dict[str, Exception] = {}
        self.stack_capacity = stack_capacity
        self.lock = threading.Lock()
        self.reported_health = HEALTHY
        self.handed: list[tuple[AdapterCheckpoint, bool]] = []
        """Every checkpoint load_adapter was given, and whether it is a ValidatedCheckpoint (the
        bank then skips its finite scan)."""

    def load_adapter(self, checkpoint: AdapterCheckpoint) -> Future[None]:
        future: Future[None] = Future()
        aid = checkpoint.manifest.id
        self.handed.append((checkpoint, isinstance(checkpoint, ValidatedCheckpoint)))

        def run() -> None:
            self.gate.wait(10)
            with self.lock:
                if aid in self.fail:
                    future.set_exception(self.fail[aid])
                    return
                if self.stack_capacity is not None and len(self.bank) >= self.stack_capacity:
                    future.set_exception(BankFull(f"stack full loading {aid}"))
                    return
                assert aid not in self.bank, f"{aid} loaded twice"
                self.bank[aid] = checkpoint
                self.log.append(("load", aid))
            future.set_result(None)

        threading.Thread(target=run).start()
        return future

    def health(self) -> EngineHealth:
        return self.reported_health

    def unload_adapter(self, adapter_id: str) -> Future[None]:
        with self.lock:
            del self.bank[adapter_id]
            self.log.append(("unload", adapter_id))
        future: Future[None] = Future()
        future.set_result(None)
        return future


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def adapter_loaded(self, name: str, version: int, seconds: float, tier: str = "disk") -> None:
        assert seconds >= 0
        assert tier in ("host", "disk")
        self.seen.append(("loaded", name, version))

    def adapter_load_failed(self, name: str, version: int, reason: str) -> None:
        self.seen.append(("failed", name, version))

    def adapter_evicted(self, name: str, version: int) -> None:
        self.seen.append(("evicted", name, version))


@pytest.fixture(scope="module")
def uploads(tiny_backbone: VisionTransformer) -> dict[str, tuple[bytes, bytes]]:
    """Two versions of ``a`` and one of ``b``, ``c``, ``d``."""
    return {
        "a1": make_upload(tiny_backbone, "a", seed=1),
        "a2": make_upload(tiny_backbone, "a", seed=2),
        "b": make_upload(tiny_backbone, "b", seed=3),
        "c": make_upload(tiny_backbone, "c", seed=4),
        "d": make_upload(tiny_backbone, "d", seed=5),
    }


@pytest.fixture
def store(
    tmp_path: Path, tiny_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> AdapterStore:
    store = AdapterStore(tmp_path / "store")
    for key in ("a1", "a2", "b", "c", "d"):
        store.put(*uploads[key], backbone=tiny_backbone)
    assert store.active("a") == 1
    assert store.versions("a") == [1, 2]
    return store


def registry_of(
    store: AdapterStore,
    engine: FakeEngine,
    backbone: VisionTransformer,
    *,
    limit: int = 8,
    pinned: tuple[str, ...] = (),
    events: Events | None = None,
) -> AdapterRegistry:
    return AdapterRegistry(
        store, engine, backbone=backbone, resident_limit=limit, pinned=pinned, events=events
    )


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


async def touch(registry: AdapterRegistry, *refs: str) -> None:
    """One request per ref, in order, each released before the next."""
    for ref in refs:
        lease = await registry.acquire(ref)
        lease.release()


# -- resolution ------------------------------------------------------------------------------


def test_parse_ref() -> None:
    assert parse_ref("esc50") == ("esc50", None)
    assert parse_ref(" esc50@3 ") == ("esc50", 3)
    assert parse_ref("esc50@v3") == ("esc50", 3)
    for bad in ("ESC50", "../x", "esc50@", "esc50@0", "esc50@x", "a@1@2", ""):
        with pytest.raises(AdapterNotFound, match="name@version"):
            parse_ref(bad)


def test_names_resolve_to_the_active_version_and_unknown_ones_list_what_exists(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)

    async def main() -> None:
        lease = await registry.acquire("a")
        assert (lease.adapter_id, lease.name, lease.version) == ("a@1", "a", 1)
        assert lease.manifest.labels == LABELS
        lease.release()
        lease.release()  # idempotent
        with registry.acquire_blocking("a@2") as second:
            assert second.adapter_id == "a@2"
        with pytest.raises(AdapterNotFound, match=r"'a@3'.*versions of 'a': 1, 2 \(active: 1\)"):
            await registry.acquire("a@3")
        with pytest.raises(AdapterNotFound, match=r"'zzz'.*in the store: a, b, c, d"):
            await registry.acquire("zzz")

    run(main)
    assert sorted(engine.bank) == ["a@1", "a@2"]
    assert registry.stats().requests == {"a": 2}
    registry.close()


# -- residency -------------------------------------------------------------------------------


def test_least_recently_used_is_evicted_at_the_limit(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    events = Events()
    registry = registry_of(store, engine, tiny_backbone, limit=2, events=events)

    async def main() -> None:
        await touch(registry, "a", "b", "a")  # b is now the least recently used
        await touch(registry, "c")
        assert sorted(engine.bank) == ["a@1", "c@1"]
        assert registry.resident() == ["a@1", "c@1"]  # LRU first
        await touch(registry, "b")  # reloaded on demand; a is now the LRU
        assert sorted(engine.bank) == ["b@1", "c@1"]

    run(main)
    assert ("evicted", "b", 1) in events.seen
    assert ("evicted", "a", 1) in events.seen
    stats = registry.stats()
    assert stats.evictions == {"b": 1, "a": 1}
    assert stats.loads == {"a": 1, "b": 2, "c": 1}
    assert stats.resident == 2
    b1 = next(s for s in registry.status("b") if s.version == 1)
    assert (b1.state, b1.loads, b1.evictions, b1.requests) == ("ready", 2, 1, 2)
    registry.close()


def test_a_leased_adapter_is_never_evicted(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone, limit=2)

    async def main() -> None:
        held_a = await registry.acquire("a")  # rows queued or in flight on a@1
        held_b = await registry.acquire("b")
        c = await registry.acquire("c")  # over the limit rather than pulling a leased adapter
        assert sorted(engine.bank) == ["a@1", "b@1", "c@1"]
        c.release()  # c is idle and the registry is over its limit: c goes
        assert sorted(engine.bank) == ["a@1", "b@1"]
        held_a.release()
        await touch(registry, "d")  # a is idle and least recently used
        assert sorted(engine.bank) == ["b@1", "d@1"]
        held_b.release()

    run(main)
    registry.close()


def test_pinned_adapters_stay_resident(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone, limit=2, pinned=("a",))

    async def main() -> None:
        assert await registry.preload() == ["a@1", "b@1"]  # pinned names first
        await touch(registry, "c", "d", "b", "c", "a@2")
        assert "a@1" in engine.bank
        assert next(s for s in registry.status("a") if s.version == 1).pinned
        # The pin follows the active version.
        await registry.activate("a", 2)
        await touch(registry, "b", "c", "d")
        assert "a@2" in engine.bank
        assert "a@1" not in engine.bank

    run(main)
    registry.close()


def test_a_request_waits_for_its_load_while_others_keep_flowing(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)

    async def main() -> None:
        await touch(registry, "a")
        engine.gate.clear()  # loads now stall in the engine
        waiting = [asyncio.ensure_future(registry.acquire("b")) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)
        assert next(s for s in registry.status("b")).state == "loading"
        lease = await asyncio.wait_for(registry.acquire("a"), 1.0)  # resident: no wait
        lease.release()
        engine.gate.set()
        leases = await asyncio.wait_for(asyncio.gather(*waiting), 5.0)
        assert {x.adapter_id for x in leases} == {"b@1"}
        assert next(s for s in registry.status("b")).in_flight == 3
        for x in leases:
            x.release()

    run(main)
    assert engine.log.count(("load", "b@1")) == 1  # three waiters, one load
    registry.close()


def test_a_waiter_that_gives_up_does_not_cancel_the_load_for_the_others(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)

    async def main() -> None:
        engine.gate.clear()
        quitter = asyncio.ensure_future(registry.acquire("b"))
        stayer = asyncio.ensure_future(registry.acquire("b"))
        await asyncio.sleep(0.05)
        quitter.cancel()  # e.g. the client disconnected or its timeout passed
        with pytest.raises(asyncio.CancelledError):
            await quitter
        engine.gate.set()
        lease = await asyncio.wait_for(stayer, 5.0)
        assert lease.adapter_id == "b@1"
        status = next(s for s in registry.status("b"))
        assert (status.state, status.in_flight) == ("ready", 1)  # the quitter's lease is gone
        lease.release()

    run(main)
    registry.close()


def test_a_failed_load_is_reported_and_retried(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    events = Events()
    registry = registry_of(store, engine, tiny_backbone, events=events)
    engine.fail["b@1"] = RuntimeError("device out of memory")

    async def main() -> None:
        with pytest.raises(AdapterUnavailable, match="b@1 could not be loaded.*out of memory"):
            await registry.acquire("b")
        status = next(s for s in registry.status("b"))
        assert (status.state, status.resident, status.in_flight) == ("failed", False, 0)
        assert status.reason is not None
        assert "out of memory" in status.reason
        del engine.fail["b@1"]
        await touch(registry, "b")
        status = next(s for s in registry.status("b"))
        assert (status.state, status.reason) == ("ready", None)

    run(main)
    assert ("failed", "b", 1) in events.seen
    assert ("loaded", "b", 1) in events.seen
    assert registry.stats().load_failures == {"b": 1}
    registry.close()


def test_a_full_bank_stack_evicts_an_idle_adapter_of_that_stack(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine(stack_capacity=2)  # every test adapter shares one (lora, rank 2) stack
    registry = registry_of(store, engine, tiny_backbone, limit=8)

    async def main() -> None:
        held = await registry.acquire("a")
        await touch(registry, "b", "c")  # BankFull -> b (idle) makes room
        assert sorted(engine.bank) == ["a@1", "c@1"]
        other = await registry.acquire("c")
        with pytest.raises(AdapterUnavailable, match="no room on the device for d@1.*device_cache"):
            await registry.acquire("d")  # a and c are both leased
        held.release()
        other.release()

    run(main)
    registry.close()


# -- hot swap and deletes ------------------------------------------------------------------


def test_activation_loads_first_and_admitted_requests_keep_their_version(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)

    async def main() -> None:
        old = await registry.acquire("a")
        engine.gate.clear()
        swap = asyncio.ensure_future(registry.activate("a", 2))
        await asyncio.sleep(0.05)
        assert store.active("a") == 1  # the pointer waits for the load
        before = await registry.acquire("a")
        assert before.version == 1
        engine.gate.set()
        await asyncio.wait_for(swap, 5.0)
        assert store.active("a") == 2
        after = await registry.acquire("a")
        assert (old.version, before.version, after.version) == (1, 1, 2)
        assert engine.log.index(("load", "a@2")) >= 0
        assert "a@1" in engine.bank
        for lease in (old, before, after):
            lease.release()
        # A failed load leaves the pointer where it was.
        failing = FakeEngine()
        failing.fail["a@1"] = RuntimeError("boom")
        other = registry_of(store, failing, tiny_backbone)
        with pytest.raises(AdapterUnavailable, match="boom"):
            await other.activate("a", 1)
        assert store.active("a") == 2
        other.close()

    run(main)
    registry.close()


def test_a_deleted_version_is_unloaded_after_its_last_lease(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)

    async def main() -> None:
        lease = await registry.acquire("a@2")
        assert await registry.delete_version("a", 2) == 1
        assert "a@2" in engine.bank  # still serving the admitted request
        with pytest.raises(AdapterNotFound, match=r"versions of 'a': 1 \(active: 1\)"):
            await registry.acquire("a@2")
        lease.release()
        assert "a@2" not in engine.bank
        await touch(registry, "b")
        assert await registry.delete("b") == [1]
        assert "b@1" not in engine.bank
        with pytest.raises(AdapterNotFound, match="no adapter named 'b'"):
            await registry.acquire("b")

    run(main)
    registry.close()


def test_upload_with_activate_swaps_to_the_new_version(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)

    async def main() -> None:
        upload = make_upload(tiny_backbone, "b", seed=9)
        result = await registry.upload(*upload, activate=True)
        assert (result.version, result.created, result.active) == (2, True, True)
        assert store.active("b") == 2
        assert "b@2" in engine.bank
        again = await registry.upload(*upload)
        assert (again.version, again.created, again.active) == (2, False, True)

    run(main)
    registry.close()


def test_upload_with_activate_loads_the_validated_upload_without_reading_it_back(
    store: AdapterStore,
    tiny_backbone: VisionTransformer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)
    reads: list[tuple[str, int]] = []
    store_load = store.load

    def counted(name: str, version: int, *, backbone: VisionTransformer) -> AdapterCheckpoint:
        reads.append((name, version))
        return store_load(name, version, backbone=backbone)

    monkeypatch.setattr(store, "load", counted)

    async def main() -> None:
        result = await registry.upload(*make_upload(tiny_backbone, "b", seed=9), activate=True)
        assert (result.version, result.active) == (2, True)
        first = await registry.upload(*make_upload(tiny_backbone, "e", seed=10), activate=True)
        # a first version is active at once in the store; with activate it is also resident
        assert (first.version, first.active) == (1, True)
        assert sorted(engine.bank) == ["b@2", "e@1"]
        await touch(registry, "c")  # an ordinary load on demand reads the store

    run(main)
    assert reads == [("c", 1)]  # the two activated uploads were never read back
    handed = {ckpt.manifest.id: (ckpt, validated) for ckpt, validated in engine.handed}
    assert all(validated for _, validated in handed.values())  # no second finite scan
    b2, _ = handed["b@2"]
    assert b2.manifest == store.manifest("b", 2)  # the store's version, not the uploaded one
    on_disk = store_load("b", 2, backbone=tiny_backbone).tensors
    assert sorted(b2.tensors) == sorted(on_disk)
    for name, tensor in on_disk.items():
        assert torch.equal(b2.tensors[name], tensor), name
    registry.close()


def test_a_load_slower_than_the_request_timeout_answers_504_and_goes_on(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone)

    async def main() -> None:
        engine.gate.clear()  # the load of b@1 is held
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="b@1 was still loading") as caught:
            await registry.acquire("b", timeout=0.2)
        assert caught.value.status_code == 504
        assert time.monotonic() - started < 5.0
        (status,) = registry.status("b")
        assert (status.state, status.in_flight) == ("loading", 0)  # its lease is given back
        with pytest.raises(RequestTimeout):
            await registry.acquire("b", timeout=0.0)  # no time left at all: same answer
        engine.gate.set()
        lease = await registry.acquire("b", timeout=5.0)  # the same load finished meanwhile
        assert lease.adapter_id == "b@1"
        lease.release()

    run(main)
    assert engine.log.count(("load", "b@1")) == 1  # one load for all three requests
    (status,) = registry.status("b")
    assert (status.state, status.in_flight, status.requests) == ("ready", 0, 3)
    registry.close()


def test_concurrent_traffic_from_threads_keeps_the_books_straight(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    """Many threads acquiring/releasing four adapters with a limit of two: every lease is of a
    resident adapter, and in the end the counts add up and the limit holds again."""
    engine = FakeEngine()
    registry = registry_of(store, engine, tiny_backbone, limit=2)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(15):
                with registry.acquire_blocking("abcd"[(i + j) % 4], timeout=10) as lease:
                    assert lease.adapter_id in engine.bank
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(registry.stats().requests.values()) == 90
    assert len(registry.resident()) <= 2
    assert sorted(engine.bank) == sorted(registry.resident())
    assert all(s.in_flight == 0 for n in "abcd" for s in registry.status(n))
    registry.close()


def test_a_load_waiting_on_a_dead_engine_gives_up(
    store: AdapterStore, tiny_backbone: VisionTransformer
) -> None:
    """The loader thread's wait on the engine is bounded: once the engine reports itself dead
    (stuck past engine_dead_s) the load fails with 503 instead of holding the thread for ever."""
    engine = FakeEngine()
    engine.gate.clear()  # the engine never finishes this load
    engine.reported_health = EngineHealth(
        stalled=True, reason="a forward has run 700 s", since=0.0, stalled_for_s=700.0, dead=True
    )
    registry = registry_of(store, engine, tiny_backbone)
    started = time.monotonic()
    with pytest.raises(AdapterUnavailable, match="engine is stuck"):
        run(lambda: registry.acquire("b"))
    assert time.monotonic() - started < 5  # a wait slice or two, not the gate's 10 s
    assert registry.status("b")[0].state == "failed"
    engine.gate.set()
    registry.close()
