"""The tiered adapter cache end to end: a real Engine on the tiny backbone under an
AdapterRegistry with a device budget in bytes and a host tier of packed adapters.

Every check counts (store reads, tiers of leases, tier counters, bytes); none times anything.
The expected tiers and counters come from an independent two-list LRU simulation written here;
the expected answers from the library alone (one adapter in a bank of its own, one row).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from torch import Tensor

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint, ValidatedCheckpoint
from lookaside.errors import AdapterNotFound
from service.engine import Engine
from service.errors import AdapterUnavailable
from service.registry import AdapterRegistry, Lease
from service.registry.packing import BankPacking
from service.store import AdapterStore
from service.tiers.host_cache import HostCache
from tests.integration.service.svc_support import checkpoint_bytes, make_checkpoint
from tests.support import alone_logits

T = TypeVar("T")
RANK1 = {"rank": 1, "alpha": 2.0}
NAMES = [f"t{i:02d}" for i in range(60)]


@pytest.fixture(scope="module")
def adapters(svc_backbone: VisionTransformer) -> dict[str, AdapterCheckpoint]:
    """60 LoRA rank-1 adapters with distinct random weights, by name (all the same size)."""
    return {
        name: make_checkpoint(svc_backbone, name, method="lora", config=RANK1, seed=i)
        for i, name in enumerate(NAMES)
    }


@pytest.fixture(scope="module")
def uploads(adapters: dict[str, AdapterCheckpoint]) -> dict[str, tuple[bytes, bytes]]:
    return {name: checkpoint_bytes(ckpt) for name, ckpt in adapters.items()}


@dataclass
class Rig:
    """One engine, its registry, the counted store, and one adapter's sizes."""

    engine: Engine
    registry: AdapterRegistry
    store: AdapterStore
    packing: BankPacking
    one_device: int
    """Device bytes of one adapter (all adapters here have the same shape)."""
    one_host: int
    """Packed (host tier) bytes of one adapter."""
    reads: Counter[str] = field(default_factory=Counter)
    """store.load calls per adapter id since the rig was built."""
    gate: threading.Event = field(default_factory=threading.Event)
    """store.load waits on it (set: no wait)."""
    reading: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    """Released once per store.load entered."""

    def settle(self) -> None:
        """Wait until every bank command enqueued so far (unloads included) has been applied."""
        self.engine.call(lambda: None, what="test barrier").result(timeout=30)

    def bytes_of(self, aid: str) -> int:
        name, _, version = aid.partition("@")
        return self.packing.device_bytes(self.store.manifest(name, int(version)))


RigFactory = Callable[..., Rig]


@pytest.fixture
def make_rig(
    tmp_path: Path,
    svc_backbone: VisionTransformer,
    uploads: dict[str, tuple[bytes, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RigFactory]:
    built: list[Rig] = []

    def build(
        count: int,
        *,
        device: int | None,
        host: int | None,
        policy: str = "lru",
        max_pending_loads: int | None = None,
    ) -> Rig:
        """A store of the first ``count`` adapters; budgets in adapters' worth of bytes."""
        store = AdapterStore(tmp_path / f"store{len(built)}")
        for name in NAMES[:count]:
            store.put(*uploads[name], backbone=svc_backbone)
        engine = Engine(svc_backbone, device=torch.device("cpu"), max_wait_ms=1.0)
        engine.start()
        packing = BankPacking(engine.bank)
        sizes = {packing.device_bytes(store.manifest(n, 1)) for n in NAMES[:count]}
        assert len(sizes) == 1
        one_device = sizes.pop()
        first = store.load(NAMES[0], 1, backbone=svc_backbone)
        one_host = packing.pack(first).nbytes
        registry = AdapterRegistry(
            store,
            engine,
            backbone=svc_backbone,
            device_budget_bytes=None if device is None else device * one_device,
            policy=policy,
            host=None if host is None else HostCache(host * one_host),
            packing=packing,
            max_pending_loads=max_pending_loads,
        )
        rig = Rig(engine, registry, store, packing, one_device, one_host)
        rig.gate.set()
        real_load = store.load

        def counted(name: str, version: int, *, backbone: VisionTransformer) -> ValidatedCheckpoint:
            rig.reads[f"{name}@{version}"] += 1
            rig.reading.release()
            assert rig.gate.wait(30), "store.load gate never opened"
            return real_load(name, version, backbone=backbone)

        monkeypatch.setattr(store, "load", counted)
        built.append(rig)
        return rig

    yield build
    for rig in built:
        rig.gate.set()
        rig.registry.close()
        rig.engine.stop(drain=False, timeout=30)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


async def touch(registry: AdapterRegistry, aid: str) -> str:
    """One request on ``aid``: acquire, release; the tier the lease was found in."""
    lease = await registry.acquire(aid)
    lease.release()
    return lease.tier


class TwoTierLru:
    """The expected behaviour, independently: an inclusive two-tier LRU counted per tier.

    A device hit touches nothing else; a device miss evicts the device's least recently used
    entry when full, then looks in the host tier (a hit: no disk read) or reads the disk and
    caches the adapter in the host tier (evicting its least recently used entry when full)."""

    def __init__(self, device: int, host: int) -> None:
        self.device_cap, self.host_cap = device, host
        self.device: list[str] = []  # least recently used first
        self.host: list[str] = []
        self.stats = {t: Counter[str]() for t in ("device", "host")}

    def access(self, aid: str) -> str:
        if aid in self.device:
            self.device.remove(aid)
            self.device.append(aid)
            self.stats["device"]["hits"] += 1
            return "device"
        self.stats["device"]["misses"] += 1
        if len(self.device) >= self.device_cap:
            self.device.pop(0)
            self.stats["device"]["evictions"] += 1
        self.device.append(aid)
        if aid in self.host:
            self.host.remove(aid)
            self.host.append(aid)
            self.stats["host"]["hits"] += 1
            return "host"
        self.stats["host"]["misses"] += 1
        if len(self.host) >= self.host_cap:
            self.host.pop(0)
            self.stats["host"]["evictions"] += 1
        self.host.append(aid)
        return "disk"


def test_a_scripted_sequence_gives_the_simulated_tier_reads_and_counters(
    make_rig: RigFactory,
) -> None:
    n, k, h = 12, 3, 6
    rig = make_rig(n, device=k, host=h)
    ids = [f"{name}@1" for name in NAMES[:n]]
    scripted = [0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 2, 3, 0, 8, 9, 10, 11, 4, 11, 4, 1, 1, 9, 2]
    rng = random.Random(21)
    sequence = [ids[i] for i in scripted] + [rng.choice(ids[:8]) for _ in range(60)]
    sim = TwoTierLru(k, h)
    registry = rig.registry
    assert registry.host is not None
    host = registry.host

    async def main() -> None:
        for step, aid in enumerate(sequence):
            before = rig.reads[aid]
            want = sim.access(aid)
            got = await touch(registry, aid)
            rig.settle()
            where = f"step {step} ({aid})"
            assert got == want, where
            assert rig.reads[aid] - before == (1 if want == "disk" else 0), where
            assert registry.resident() == sim.device, where  # the same LRU order
            assert sorted(rig.engine.resident()) == sorted(sim.device), where
            assert sorted(a for a in ids if a in host) == sorted(sim.host), where

    run(main)
    tiers = rig.registry.tier_stats()
    for tier in ("device", "host"):
        got = tiers[tier]
        want = sim.stats[tier]
        assert (got.hits, got.misses, got.evictions) == (
            want["hits"],
            want["misses"],
            want["evictions"],
        ), tier
    assert sum(rig.reads.values()) == sim.stats["host"]["misses"]  # host hits read no disk
    assert tiers["device"].bytes == k * rig.one_device
    assert tiers["host"].bytes == h * rig.one_host
    assert (tiers["host"].entries, tiers["host"].inflight) == (h, 0)
    assert sim.stats["host"]["hits"] > 5
    assert sim.stats["host"]["evictions"] > 5
    assert rig.engine.bank.used_bytes() == k * rig.one_device


def _zipf(rng: random.Random, n: int, count: int, s: float = 1.1) -> list[int]:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    return rng.choices(range(n), weights=weights, k=count)


@pytest.mark.parametrize("policy", ["lru", "2q"])
def test_churn_stays_within_each_tier_budget(make_rig: RigFactory, policy: str) -> None:
    n, k, h = 60, 3, 6
    rig = make_rig(n, device=k, host=h, policy=policy)
    rng = random.Random(7)
    order = rng.sample(NAMES, n)  # which names are hot: not the store's order
    sequence = [f"{order[i]}@1" for i in _zipf(rng, n, 300)]
    device_budget, host_budget = k * rig.one_device, h * rig.one_host
    registry = rig.registry
    tiers_seen: Counter[str] = Counter()

    async def main() -> None:
        held: Lease | None = None
        for step, aid in enumerate(sequence):
            lease = await registry.acquire(aid)
            tiers_seen[lease.tier] += 1
            if held is not None:
                held.release()
            held = lease if rng.random() < 0.3 else None  # sometimes two leases overlap
            if held is None:
                lease.release()
            rig.settle()
            resident = registry.resident()
            where = f"step {step} ({aid}, {policy})"
            assert sum(rig.bytes_of(a) for a in resident) <= device_budget, where
            assert rig.engine.bank.used_bytes() == sum(rig.bytes_of(a) for a in resident), where
            tiers = registry.tier_stats()
            assert tiers["device"].bytes <= device_budget, where
            assert tiers["host"].bytes <= host_budget, where
            assert tiers["host"].inflight == 0, where
            assert sorted(rig.engine.resident()) == sorted(resident), where
            assert held is None or held.adapter_id in resident, where
        if held is not None:
            held.release()

    run(main)
    tiers = registry.tier_stats()
    assert tiers["device"].hits + tiers["device"].misses == len(sequence)
    assert sum(rig.reads.values()) == tiers["host"].misses == tiers_seen["disk"]
    assert tiers["host"].hits == tiers_seen["host"]
    assert min(tiers_seen["device"], tiers_seen["host"], tiers_seen["disk"]) > 10, tiers_seen
    assert tiers["device"].evictions > 50, tiers
    assert tiers["host"].evictions > 20, tiers


def _reference(backbone: VisionTransformer, ckpt: AdapterCheckpoint, rows: Tensor) -> Tensor:
    """Each row through ``ckpt`` alone, in a bank of its own, one row per forward (no service
    code)."""
    return torch.stack([alone_logits(backbone, ckpt, row).reshape(-1) for row in rows])


def _named(aid: str) -> Callable[[str], str]:
    """An assert_close message that names the adapter."""
    return lambda detail: f"{aid}: {detail}"


def test_every_answer_equals_its_versions_reference_across_tiers(
    make_rig: RigFactory, adapters: dict[str, AdapterCheckpoint], svc_backbone: VisionTransformer
) -> None:
    n = 8
    rig = make_rig(n, device=2, host=4)
    feats = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(5))
    refs = {f"{name}@1": _reference(svc_backbone, adapters[name], feats) for name in NAMES[:n]}
    # pairs served together (one mixed batch when both are queued) so that adapters come back
    # from the device, from the host tier, and from the disk after leaving both
    pairs = [(0, 1), (0, 1), (2, 3), (0, 1), (4, 5), (2, 3), (4, 5), (6, 7), (4, 6), (7, 0)]
    sim = TwoTierLru(2, 4)
    tiers: Counter[str] = Counter()
    answered: Counter[str] = Counter()

    async def main() -> None:
        for a, b in pairs:
            leases = [await rig.registry.acquire(f"{NAMES[i]}@1") for i in (a, b)]
            futures = [rig.engine.submit(feats, lease.adapter_id) for lease in leases]
            outs = [await asyncio.wrap_future(f) for f in futures]
            for lease, out in zip(leases, outs, strict=True):
                assert lease.tier == sim.access(lease.adapter_id), lease.adapter_id
                aid = lease.adapter_id
                torch.testing.assert_close(out, refs[aid], atol=1e-5, rtol=1e-5, msg=_named(aid))
                tiers[lease.tier] += 1
                answered[lease.adapter_id] += 1
                lease.release()

    run(main)
    assert set(tiers) == {"device", "host", "disk"}, tiers
    assert len(answered) == n
    # adapters really differ, so serving the wrong slot would show
    assert not torch.allclose(refs["t00@1"], refs["t01@1"], atol=1e-3)


def test_cold_loads_over_max_pending_get_cold_overload_while_resident_ones_serve(
    make_rig: RigFactory,
) -> None:
    rig = make_rig(6, device=None, host=None, max_pending_loads=2)
    registry = rig.registry

    async def main() -> None:
        assert await touch(registry, "t00@1") == "disk"
        rig.gate.clear()  # every store.load from now on hangs until the gate opens
        cold = [asyncio.create_task(registry.acquire(f"{n}@1")) for n in ("t01", "t02")]
        await asyncio.sleep(0)  # both tasks take their lease and start their load
        for _ in range(2):  # both loader threads are inside store.load
            assert await asyncio.to_thread(rig.reading.acquire, True, 30)
        assert registry.loads_in_progress == 2
        with pytest.raises(AdapterUnavailable, match="cold_overload"):
            await registry.acquire("t03@1")
        assert rig.reads["t03@1"] == 0
        assert "t03@1" not in registry.resident()  # the refused load left nothing behind
        hot = await registry.acquire("t00@1")  # resident: served while the cold ones hang
        assert hot.tier == "device"
        hot.release()
        assert not any(task.done() for task in cold)
        rig.gate.set()
        leases = await asyncio.wait_for(asyncio.gather(*cold), 30)
        assert [lease.tier for lease in leases] == ["disk", "disk"]
        for lease in leases:
            lease.release()
        assert registry.loads_in_progress == 0
        assert await touch(registry, "t03@1") == "disk"  # room again

    run(main)
    rig.settle()
    assert sorted(rig.engine.resident()) == ["t00@1", "t01@1", "t02@1", "t03@1"]


def test_a_deleted_version_leaves_the_host_tier_and_is_not_found(
    make_rig: RigFactory, adapters: dict[str, AdapterCheckpoint], svc_backbone: VisionTransformer
) -> None:
    rig = make_rig(3, device=1, host=4)
    registry = rig.registry
    host = registry.host
    assert host is not None
    second = make_checkpoint(svc_backbone, "t00", method="lora", config=RANK1, seed=99)
    assert rig.store.put(*checkpoint_bytes(second), backbone=svc_backbone).version == 2

    async def main() -> None:
        assert await touch(registry, "t00@2") == "disk"
        assert await touch(registry, "t01@1") == "disk"  # evicts t00@2 from the device
        assert "t00@2" in host
        assert "t00@2" not in registry.resident()
        assert await registry.delete_version("t00", 2) == 1
        assert "t00@2" not in host
        with pytest.raises(AdapterNotFound):
            await registry.acquire("t00@2")
        # a version resident on the device and in the host tier: deleted from both
        assert "t01@1" in host
        assert "t01@1" in registry.resident()
        assert await registry.delete_version("t01", 1, force=True) is None
        assert "t01@1" not in host
        with pytest.raises(AdapterNotFound):
            await registry.acquire("t01")
        with pytest.raises(AdapterNotFound):
            await registry.acquire("t01@1")

    run(main)
    rig.settle()
    assert "t01@1" not in rig.engine.resident()
    assert rig.reads == Counter({"t00@2": 1, "t01@1": 1})
    assert registry.tier_stats()["host"].entries == len(host) == 0


def test_an_upload_activated_at_once_seeds_the_host_tier_without_a_read(
    make_rig: RigFactory, svc_backbone: VisionTransformer
) -> None:
    rig = make_rig(2, device=1, host=4)
    registry = rig.registry
    host = registry.host
    assert host is not None
    fresh = make_checkpoint(svc_backbone, "up", method="lora", config=RANK1, seed=77)

    async def main() -> None:
        result = await registry.upload(*checkpoint_bytes(fresh), activate=True)
        assert (result.name, result.version, result.active) == ("up", 1, True)
        assert "up@1" in host
        assert registry.resident() == ["up@1"]
        assert await touch(registry, "up") == "device"
        assert await touch(registry, "t00") == "disk"  # evicts up@1 from the device
        assert registry.resident() == ["t00@1"]
        assert await touch(registry, "up") == "host"  # back from host memory, no read

    run(main)
    assert rig.reads["up@1"] == 0
    assert rig.reads == Counter({"t00@1": 1})


# -- preload and a delete racing a load ------------------------------------------------------


def test_preload_stops_once_the_device_tier_is_full(make_rig: RigFactory) -> None:
    rig = make_rig(6, device=3, host=None)
    loaded = run(rig.registry.preload)
    rig.settle()
    assert sorted(loaded) == sorted(rig.registry.resident()) == sorted(rig.engine.resident())
    assert sum(rig.reads.values()) == len(loaded) == 3
    assert rig.registry.tier_stats()["device"].evictions == 0


def test_preload_loads_at_most_its_limit(make_rig: RigFactory) -> None:
    """The startup preload is bounded by a count too, so startup does not grow with the store."""
    rig = make_rig(6, device=5, host=None)
    loaded = run(lambda: rig.registry.preload(2))
    rig.settle()
    assert len(loaded) == 2
    assert sorted(loaded) == sorted(rig.registry.resident())
    assert sum(rig.reads.values()) == 2


def test_a_version_deleted_while_it_loads_leaves_nothing_in_the_host_tier(
    make_rig: RigFactory, svc_backbone: VisionTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(1, device=2, host=4)
    registry = rig.registry
    host = registry.host
    assert host is not None
    second = make_checkpoint(svc_backbone, "t00", method="lora", config=RANK1, seed=98)
    assert rig.store.put(*checkpoint_bytes(second), backbone=svc_backbone).version == 2
    counted = rig.store.load
    read, proceed = threading.Event(), threading.Event()

    def read_then_wait(
        name: str, version: int, *, backbone: VisionTransformer
    ) -> ValidatedCheckpoint:
        ckpt = counted(name, version, backbone=backbone)
        read.set()  # read and validated; the version is deleted before it is packed
        assert proceed.wait(30)
        return ckpt

    monkeypatch.setattr(rig.store, "load", read_then_wait)

    async def main() -> None:
        try:
            loading = asyncio.create_task(registry.acquire("t00@2"))
            assert await asyncio.to_thread(read.wait, 30)
            assert await registry.delete_version("t00", 2) == 1
            assert "t00@2" not in host
        finally:
            proceed.set()
        lease = await asyncio.wait_for(loading, 30)  # admitted before the delete: served
        lease.release()  # the last lease of a deleted version: unloaded
        with pytest.raises(AdapterNotFound):
            await registry.acquire("t00@2")

    run(main)
    rig.settle()
    assert "t00@2" not in rig.engine.resident()
    assert "t00@2" not in registry.resident()
    assert "t00@2" not in host
    assert registry.tier_stats()["host"].bytes == 0


def test_a_cold_burst_neither_refuses_nor_evicts_nor_holds_back_the_hot_adapters(
    make_rig: RigFactory,
) -> None:
    """Fairness by ordering: waves of cold adapters (more than max_pending_loads each) whose
    disk reads hang; meanwhile the hot adapters are served from the device, never refused, and
    answered before any of the wave's loads completes; the cold overflow gets cold_overload;
    2Q evicts the previous wave, never the hot adapters."""
    rig = make_rig(20, device=6, host=None, policy="2q", max_pending_loads=4)
    registry, engine = rig.registry, rig.engine
    feats = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(9))
    order: list[str] = []

    async def hot_request(name: str) -> str:
        lease = await registry.acquire(f"{name}@1")
        try:
            await asyncio.wait_for(asyncio.wrap_future(engine.submit(feats, lease.adapter_id)), 30)
            return lease.tier
        finally:
            lease.release()

    async def main() -> None:
        for _ in range(2):  # a second touch each: the hot adapters are in 2Q's main queue
            for name in ("t00", "t01"):
                await hot_request(name)
        for wave in range(3):
            names = NAMES[2 + 6 * wave : 8 + 6 * wave]
            rig.gate.clear()
            tasks = [asyncio.create_task(registry.acquire(f"{n}@1")) for n in names]
            await asyncio.sleep(0)  # each takes its lease (or is refused) in its first step
            for _ in range(4):  # four loader threads... two by default: wait for those reading
                if not await asyncio.to_thread(rig.reading.acquire, True, 0.5):
                    break
            refused = [t for t in tasks if t.done()]
            assert len(refused) == 2
            for task in refused:
                with pytest.raises(AdapterUnavailable, match="cold_overload"):
                    task.result()
            tiers = [await hot_request(n) for n in ("t00", "t01", "t00", "t01")]
            assert tiers == ["device"] * 4, (wave, tiers)
            order.append(f"hot {wave}")
            assert not any(t.done() for t in tasks if t not in refused)
            rig.gate.set()
            leases = await asyncio.wait_for(
                asyncio.gather(*(t for t in tasks if t not in refused)), 30
            )
            order.append(f"cold {wave}")
            assert [lease.tier for lease in leases] == ["disk"] * 4
            for lease in leases:
                lease.release()
            while rig.reading.acquire(blocking=False):  # the reads counted after the check
                pass

    run(main)
    rig.settle()
    assert order == ["hot 0", "cold 0", "hot 1", "cold 1", "hot 2", "cold 2"]
    resident = set(registry.resident())
    assert {"t00@1", "t01@1"} <= resident  # never evicted by the waves
    assert resident - {"t00@1", "t01@1"} == {f"{n}@1" for n in NAMES[14:18]}  # the last wave
    assert rig.reads["t00@1"] == rig.reads["t01@1"] == 1


def test_each_versions_status_names_its_tier(make_rig: RigFactory) -> None:
    """``GET /adapters/{name}``'s ``tier``: device (resident), host (evicted, packed copy kept)
    or disk."""
    rig = make_rig(3, device=1, host=2)

    async def main() -> None:
        assert await touch(rig.registry, "t00@1") == "disk"
        assert await touch(rig.registry, "t01@1") == "disk"  # evicts t00 from the device

    run(main)
    rig.settle()
    tiers = {n: rig.registry.status(n)[0].tier for n in ("t00", "t01", "t02")}
    assert tiers == {"t00": "host", "t01": "device", "t02": "disk"}
    assert rig.registry.status("t01")[0].device_bytes == rig.one_device
