"""Regressions of the tiered adapter cache's review (commit fea3082): each test is one proven
bug, built on a real Engine on the tiny backbone (or, for a stuck engine, a fake one) under an
AdapterRegistry with a device budget in bytes.

Every check is by state and counts (resident ids, leases, evictions, bytes, loads in progress);
the only clock is a bounded wait with a generous timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from lookaside.backbone import VisionTransformer
from lookaside.bank.packed import PackedAdapter
from lookaside.checkpoint import AdapterCheckpoint, ValidatedCheckpoint
from lookaside.errors import BankFull
from service.engine import Engine
from service.engine.watchdog import HEALTHY, EngineHealth
from service.errors import AdapterUnavailable
from service.registry import AdapterRegistry
from service.registry.packing import BankPacking
from service.store import AdapterStore
from tests.integration.service.svc_support import checkpoint_bytes, make_checkpoint

RANK1 = {"rank": 1, "alpha": 2.0}
RANK2 = {"rank": 2, "alpha": 4.0}  # another config: another stack of the bank
RANK32 = {"rank": 32, "alpha": 2.0}  # larger than the whole device tier below
SPECS: dict[str, dict[str, float]] = {
    **{f"s{i}": RANK1 for i in range(6)},
    "b0": RANK2,
    "big": RANK32,
}


@pytest.fixture(scope="module")
def uploads(svc_backbone: VisionTransformer) -> dict[str, tuple[bytes, bytes]]:
    """(manifest, weights) per adapter name: six LoRA rank-1, one rank-2, one rank-32."""
    return {
        name: checkpoint_bytes(
            make_checkpoint(svc_backbone, name, method="lora", config=cfg, seed=i)
        )
        for i, (name, cfg) in enumerate(SPECS.items())
    }


@pytest.fixture
def make_store(
    tmp_path: Path, svc_backbone: VisionTransformer, uploads: dict[str, tuple[bytes, bytes]]
) -> Callable[..., AdapterStore]:
    def build(*names: str) -> AdapterStore:
        store = AdapterStore(tmp_path / "store")
        for name in names:
            store.put(*uploads[name], backbone=svc_backbone)
        return store

    return build


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Registries and engines to close / stop after the test (registries first)."""
    held: list[Any] = []
    yield held
    for obj in held:
        if isinstance(obj, AdapterRegistry):
            obj.close()
    for obj in held:
        if isinstance(obj, Engine):
            obj.stop(drain=False, timeout=30)


def _engine(backbone: VisionTransformer, **kwargs: Any) -> Engine:
    engine = Engine(backbone, device=torch.device("cpu"), max_wait_ms=1.0, **kwargs)
    engine.start()
    return engine


def _serving(
    backbone: VisionTransformer,
    store: AdapterStore,
    closing: list[Any],
    device_budget_bytes: int | None = None,
    **engine_kw: Any,
) -> tuple[Engine, AdapterRegistry]:
    """A started engine and a registry on ``store`` sharing one device budget (both closed at
    the end of the test)."""
    engine = _engine(backbone, device_budget_bytes=device_budget_bytes, **engine_kw)
    registry = AdapterRegistry(
        store,
        engine,
        backbone=backbone,
        device_budget_bytes=device_budget_bytes,
        packing=BankPacking(engine.bank),
    )
    closing += [registry, engine]
    return engine, registry


def _device_bytes(backbone: VisionTransformer, store: AdapterStore, name: str) -> int:
    """Device bytes of one adapter (slot + head), from a bank the test does not use."""
    return BankPacking(Engine(backbone, device=torch.device("cpu")).bank).device_bytes(
        store.manifest(name, 1)
    )


def _settle(engine: Engine) -> None:
    """Wait until every bank command enqueued so far (unloads included) has been applied."""
    engine.call(lambda: None, what="test barrier").result(timeout=30)


async def _touch(registry: AdapterRegistry, ref: str, timeout: float = 30.0) -> None:
    (await registry.acquire(ref, timeout=timeout)).release()


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes (its last answer)."""
    end = time.monotonic() + timeout
    while not check() and time.monotonic() < end:
        time.sleep(0.02)
    return check()


def test_an_idle_stack_filling_the_device_tier_gives_way_to_another_stack(
    svc_backbone: VisionTransformer, make_store: Callable[..., AdapterStore], closing: list[Any]
) -> None:
    """Two idle rank-1 adapters' stack holds three slots of a budget worth three of them: a
    rank-2 adapter fits the registry's count once one is evicted, but not the engine's bytes
    until the rank-1 stack is emptied. It loads (was: 503 for ever, no idle victim of *its*
    stack), both idle rank-1 adapters are evicted, and the bytes stay within the budget."""
    store = make_store("s0", "s1", "b0")
    one = _device_bytes(svc_backbone, store, "s0")
    budget = 3 * one
    assert one + _device_bytes(svc_backbone, store, "b0") <= budget  # b0 fits beside one s*
    engine, registry = _serving(
        svc_backbone, store, closing, device_budget_bytes=budget, bank_capacity=8
    )

    async def scenario() -> None:
        await _touch(registry, "s0")
        await _touch(registry, "s1")
        assert registry.resident() == ["s0@1", "s1@1"]
        await _touch(registry, "b0")

    asyncio.run(scenario())
    _settle(engine)
    assert registry.resident() == ["b0@1"]
    assert engine.resident() == ["b0@1"]
    assert registry.tier_stats()["device"].evictions == 2
    assert registry.tier_stats()["device"].bytes <= budget
    assert engine.tier_stats().allocated <= budget


def test_a_late_release_on_a_failed_entry_leaves_the_next_loads_lease_count(
    svc_backbone: VisionTransformer,
    make_store: Callable[..., AdapterStore],
    closing: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Request A waits on a load that fails; before A's task wakes to give its lease back,
    request B leases the same version (a new load, which works). A's release is A's entry's:
    B's lease still counts, so B's version is not evicted while B holds it (was: evicted, and
    B's release logged 'released more often than taken')."""
    store = make_store("s0", "s1")
    one = _device_bytes(svc_backbone, store, "s0")
    engine = _engine(svc_backbone)  # no engine budget: the registry's target is what is tested
    registry = AdapterRegistry(
        store,
        engine,
        backbone=svc_backbone,
        device_budget_bytes=one,  # one adapter fits
        packing=BankPacking(engine.bank),
    )
    closing += [registry, engine]
    real_load = store.load
    failures = [OSError("disk hiccup")]

    def load(name: str, version: int, *, backbone: VisionTransformer) -> ValidatedCheckpoint:
        if failures:
            raise failures.pop()
        return real_load(name, version, backbone=backbone)

    monkeypatch.setattr(store, "load", load)
    caplog.set_level(logging.ERROR, logger="service.registry")

    async def scenario() -> None:
        first = asyncio.ensure_future(registry.acquire("s0@1"))
        await asyncio.sleep(0)  # A leased s0@1 and waits on its load
        failed = registry._active.entries["s0@1"]
        assert failed.done.exception(timeout=30) is not None  # the loop stays busy meanwhile
        held = await registry.acquire("s0@1")  # B: a new load of s0@1, which works
        with pytest.raises(AdapterUnavailable, match="disk hiccup"):
            await first  # A's lease is given back now
        assert registry._active.entries["s0@1"].leases == 1  # B's
        await _touch(registry, "s1@1")  # over the budget: evicts what is idle, not s0@1
        _settle(engine)
        assert "s0@1" in registry.resident()
        assert "s0@1" in engine.resident()
        held.release()
        assert registry._active.entries["s0@1"].leases == 0

    asyncio.run(scenario())
    assert not [r for r in caplog.records if "released more often" in r.getMessage()]


class StuckEngine:
    """Engine side of the registry: one slot (a second load gets BankFull), and a worker that
    never applies an unload; ``health`` says what the test sets."""

    def __init__(self) -> None:
        self.bank: set[str] = set()
        self.state: EngineHealth = HEALTHY

    def load_adapter(self, checkpoint: AdapterCheckpoint | PackedAdapter) -> Future[None]:
        future: Future[None] = Future()
        if self.bank:
            future.set_exception(BankFull("stack full"))
        else:
            self.bank.add(checkpoint.manifest.id)
            future.set_result(None)
        return future

    def unload_adapter(self, aid: str) -> Future[None]:
        return Future()  # stuck: never applied

    def health(self) -> EngineHealth:
        return self.state


def test_a_load_waiting_on_an_eviction_fails_once_the_engine_is_dead(
    svc_backbone: VisionTransformer,
    make_store: Callable[..., AdapterStore],
    closing: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BankFull -> the idle victim's unload is handed to an engine whose worker is stuck and
    which reports itself dead: the load fails with 'engine is stuck' within the watch thread's
    period and stops counting as in progress (was: 'loading' until the worker recovered, a
    RequestTimeout, and cold_overload for every other cold version)."""
    monkeypatch.setattr("service.registry.loader.WAIT_SLICE_S", 0.05)
    store = make_store("s0", "s1")
    engine = StuckEngine()
    registry = AdapterRegistry(store, engine, backbone=svc_backbone, max_pending_loads=1)
    closing.append(registry)

    async def scenario() -> None:
        await _touch(registry, "s0@1")
        engine.state = replace(HEALTHY, stalled=True, dead=True, reason="forward stuck")
        with pytest.raises(AdapterUnavailable, match="engine is stuck"):
            await registry.acquire("s1@1", timeout=10)
        assert registry._active.entries["s1@1"].state == "failed"
        assert registry.loads_in_progress == 0
        with pytest.raises(AdapterUnavailable, match="engine is stuck"):  # not cold_overload
            await registry.acquire("s0@1", timeout=10)  # evicted: needs a load
        assert registry.loads_in_progress == 0

    asyncio.run(scenario())


def test_a_load_published_after_the_watch_thread_failed_it_is_unloaded(
    svc_backbone: VisionTransformer,
    make_store: Callable[..., AdapterStore],
    closing: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three-step load (forced on CPU): the copy runs past engine_dead_s, so the watch thread
    fails the load; the copy then ends and the engine publishes the adapter. The registry
    unloads it, and later loads of that version work (was: left in the bank, unknown to the
    registry, and every later load failed with 'already loaded')."""
    monkeypatch.setattr("service.engine.loads.copies_inline", lambda device, nbytes: False)
    store = make_store("s0")
    engine, registry = _serving(svc_backbone, store, closing, stall_s=0.2, dead_s=0.4)
    real_load, real_publish = engine.bank.load, engine.bank.publish
    published = threading.Event()

    def slow_load(*args: Any) -> Any:
        if not published.is_set():
            time.sleep(1.0)  # past dead_s: the engine reports itself dead meanwhile
        return real_load(*args)

    def publish(*args: Any) -> Any:
        try:
            return real_publish(*args)
        finally:
            published.set()

    monkeypatch.setattr(engine.bank, "load", slow_load)
    monkeypatch.setattr(engine.bank, "publish", publish)

    async def scenario() -> None:
        with pytest.raises(AdapterUnavailable, match="engine is stuck"):
            await registry.acquire("s0@1", timeout=10)
        assert published.wait(10)  # the copy ended: the engine published s0@1 after all
        _wait_for(lambda: engine.resident() == [] and not engine.health().stalled, timeout=5)
        _settle(engine)
        assert engine.resident() == []  # taken back
        assert registry.tier_stats()["device"].bytes == 0
        for _ in range(2):
            await _touch(registry, "s0@1", timeout=10)
        assert registry.resident() == ["s0@1"]
        assert engine.resident() == ["s0@1"]

    asyncio.run(scenario())


def test_a_version_larger_than_the_device_tier_is_refused_without_evicting(
    svc_backbone: VisionTransformer, make_store: Callable[..., AdapterStore], closing: list[Any]
) -> None:
    """An adapter whose device bytes alone exceed the budget gets a 503 naming
    device_cache_bytes, and every resident version stays (was: the whole tier evicted first,
    then the load failed anyway)."""
    store = make_store("s0", "s1", "s2", "big")
    one = _device_bytes(svc_backbone, store, "s0")
    budget = 6 * one
    assert _device_bytes(svc_backbone, store, "big") > budget
    engine, registry = _serving(
        svc_backbone, store, closing, device_budget_bytes=budget, bank_capacity=3
    )
    refused: list[BaseException] = []

    async def scenario() -> None:
        for name in ("s0", "s1", "s2"):
            await _touch(registry, name)
        assert registry.resident() == ["s0@1", "s1@1", "s2@1"]
        try:
            await _touch(registry, "big")
        except Exception as exc:  # checked below, after what it must not have evicted
            refused.append(exc)

    asyncio.run(scenario())
    _settle(engine)
    assert registry.tier_stats()["device"].evictions == 0
    assert registry.resident() == ["s0@1", "s1@1", "s2@1"]
    assert engine.resident() == ["s0@1", "s1@1", "s2@1"]
    assert len(refused) == 1
    assert isinstance(refused[0], AdapterUnavailable)
    assert "device_cache_bytes" in str(refused[0])


def test_a_budget_of_six_adapters_holds_six_heads_included(
    svc_backbone: VisionTransformer, make_store: Callable[..., AdapterStore], closing: list[Any]
) -> None:
    """A budget of exactly six adapters (slot + head each) holds six with no eviction (was:
    the stack took every slot that fit beside one head, so each later head was refused and
    the registry evicted: it held one)."""
    names = [f"s{i}" for i in range(6)]
    store = make_store(*names)
    budget = 6 * _device_bytes(svc_backbone, store, "s0")
    engine, registry = _serving(svc_backbone, store, closing, device_budget_bytes=budget)

    async def scenario() -> None:
        for name in names:
            await _touch(registry, name)

    asyncio.run(scenario())
    _settle(engine)
    want = [f"{name}@1" for name in names]
    assert registry.resident() == want
    assert engine.resident() == want
    assert registry.tier_stats()["device"].evictions == 0
    assert engine.tier_stats().allocated <= budget


def test_a_new_load_racing_an_orphans_publish_is_handed_over_again(
    svc_backbone: VisionTransformer,
    make_store: Callable[..., AdapterStore],
    closing: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The given-up load's publish is held until a second request's load of the same version
    is in progress: the orphan is unloaded and the second load handed over again, so it
    succeeds and the version stays loadable (was: 'already loaded' for ever)."""
    monkeypatch.setattr("service.engine.loads.copies_inline", lambda device, nbytes: False)
    store = make_store("s0")
    engine, registry = _serving(svc_backbone, store, closing, stall_s=0.2, dead_s=0.4)
    real_load, real_publish = engine.bank.load, engine.bank.publish
    slowed, at_publish, go = threading.Event(), threading.Event(), threading.Event()

    def slow_load(*args: Any) -> Any:
        if not slowed.is_set():
            slowed.set()
            time.sleep(1.0)  # past dead_s: the watch thread gives the load up
        return real_load(*args)

    def held_publish(*args: Any) -> Any:
        if not at_publish.is_set():
            at_publish.set()
            assert go.wait(10)
        return real_publish(*args)

    monkeypatch.setattr(engine.bank, "load", slow_load)
    monkeypatch.setattr(engine.bank, "publish", held_publish)

    async def scenario() -> None:
        with pytest.raises(AdapterUnavailable, match="engine is stuck"):
            await registry.acquire("s0@1", timeout=10)
        assert await asyncio.to_thread(at_publish.wait, 10)
        second = asyncio.ensure_future(registry.acquire("s0@1", timeout=10))
        await asyncio.sleep(0)  # its entry is loading before the orphan is published
        assert registry.status("s0")[0].state == "loading"
        go.set()
        (await second).release()
        for _ in range(2):
            await _touch(registry, "s0@1", timeout=10)
        assert registry.resident() == ["s0@1"]
        assert engine.resident() == ["s0@1"]

    asyncio.run(scenario())
