"""The engine's device tier in bytes (service.engine.device_tier): stacks are created and grown
only as far as the budget allows, BankFull names the budget, the snapshot matches the bank, and
answers after a capped growth equal the plain reference. Sizes are counted, never timed.

Sizes used below, for LoRA rank 1 on the tiny backbone: ``S`` bytes per slot (the checkpoint's
site tensors) and ``H`` bytes per head (its ``head.*`` tensors), counted from the checkpoint
itself, not from the bank's arithmetic.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
import torch

from lookaside.adapters.shapes import HEAD_PREFIX
from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import AdapterCheckpoint
from lookaside.errors import BankFull
from service.engine import Engine
from service.engine.device_tier import DeviceTierStats
from tests.integration.service.svc_support import make_checkpoint, tiny
from tests.support import alone_logits

CONFIG = {"rank": 1, "alpha": 1.0}
WIDER = {"rank": 2, "alpha": 1.0}


@pytest.fixture(scope="module")
def backbone() -> VisionTransformer:
    return tiny()


@pytest.fixture(scope="module")
def ckpts(backbone: VisionTransformer) -> list[AdapterCheckpoint]:
    return [
        make_checkpoint(backbone, f"a{i}", method="lora", config=CONFIG, seed=i) for i in range(6)
    ]


def _sizes(ckpt: AdapterCheckpoint) -> tuple[int, int]:
    """(slot bytes, head bytes) of one fp32 adapter, from its checkpoint's tensors."""
    site = sum(t.numel() for k, t in ckpt.tensors.items() if not k.startswith(HEAD_PREFIX))
    head = sum(t.numel() for k, t in ckpt.tensors.items() if k.startswith(HEAD_PREFIX))
    return site * 4, head * 4


def _engine(backbone: VisionTransformer, budget: int | None, capacity: int = 2) -> Engine:
    return Engine(
        backbone,
        device=torch.device("cpu"),
        max_wait_ms=1.0,
        bank_capacity=capacity,
        device_budget_bytes=budget,
    )


def _capacity(eng: Engine) -> int:
    return eng.bank.stack_capacity("lora", CONFIG)


def _bank_stats(eng: Engine) -> DeviceTierStats:
    bank = eng.bank
    return DeviceTierStats(
        eng.tier.budget, bank.allocated_bytes(), bank.used_bytes(), len(bank.ids())
    )


def test_the_bank_counts_what_the_checkpoint_holds(
    backbone: VisionTransformer, ckpts: list[AdapterCheckpoint]
) -> None:
    slot, head = _sizes(ckpts[0])
    eng = _engine(backbone, None)
    manifest = ckpts[0].manifest
    assert eng.bank.slot_bytes("lora", CONFIG) == slot
    assert eng.bank.expected_bytes("lora", CONFIG, manifest.head_config()) == slot + head
    eng.load_adapter(ckpts[0]).result(timeout=10)
    assert eng.bank.allocated_bytes() == 2 * slot + head  # the stack at capacity + one head


def test_growth_stops_at_what_fits_and_the_next_load_is_refused(
    backbone: VisionTransformer, ckpts: list[AdapterCheckpoint]
) -> None:
    s, h = _sizes(ckpts[0])
    assert 2 * h < s < 3 * h  # the arithmetic below relies on it
    budget = 5 * s + 5 * h
    eng = _engine(backbone, budget, capacity=2)
    # capacity after each load: 2 (new stack), 2, 4 (doubled: fits), 4, 5 (capped, not 8)
    for ckpt, capacity in zip(ckpts[:5], [2, 2, 4, 4, 5], strict=True):
        eng.load_adapter(ckpt).result(timeout=10)
        assert _capacity(eng) == capacity
        assert eng.bank.allocated_bytes() == capacity * s + len(eng.bank.ids()) * h <= budget
    assert eng.bank.allocated_bytes() == budget
    with pytest.raises(BankFull) as refused:
        eng.load_adapter(ckpts[5]).result(timeout=10)
    message = str(refused.value)
    assert message.startswith(f"device tier full: {budget} of {budget} bytes allocated")
    assert f"needs {s + h} bytes" in message
    assert "device_cache_bytes" in message
    assert _capacity(eng) == 5
    assert eng.bank.allocated_bytes() == budget
    assert eng.tier_stats() == DeviceTierStats(budget, budget, budget, 5)
    # the registry's answer to BankFull: evict one of that stack, then retry
    eng.unload_adapter(ckpts[0].manifest.id).result(timeout=10)
    eng.load_adapter(ckpts[5]).result(timeout=10)
    assert _capacity(eng) == 5
    assert eng.bank.allocated_bytes() == budget


def test_a_new_stack_takes_only_the_slots_that_fit(
    backbone: VisionTransformer, ckpts: list[AdapterCheckpoint]
) -> None:
    s, h = _sizes(ckpts[0])
    eng = _engine(backbone, 3 * (s + h), capacity=8)
    eng.load_adapter(ckpts[0]).result(timeout=10)
    assert _capacity(eng) == 3  # not bank_capacity's 8: three adapters, heads included
    assert eng.bank.allocated_bytes() == 3 * s + h
    padded = _engine(backbone, 3 * s + h, capacity=8)  # three slots, but heads for only one
    padded.load_adapter(ckpts[0]).result(timeout=10)
    assert _capacity(padded) == 2  # no slot whose adapter's head could never fit
    small = _engine(backbone, s + h - 1, capacity=8)  # not even one slot and a head
    with pytest.raises(BankFull, match=rf"device tier full: 0 of {s + h - 1} bytes .*new stack"):
        small.load_adapter(ckpts[0]).result(timeout=10)
    assert small.bank.allocated_bytes() == 0
    assert small.resident() == []
    probe = make_checkpoint(backbone, "p", method="linear", seed=9)  # a head only, no slot
    assert _sizes(probe) == (0, h)
    assert 3 * h <= s + h - 1 < 4 * h
    for n in (1, 2, 3):
        small.load_adapter(probe, f"p@{n}").result(timeout=10)
        assert small.bank.allocated_bytes() == n * h
    with pytest.raises(BankFull, match="needs .* bytes \\(its head\\)"):
        small.load_adapter(probe, "p@4").result(timeout=10)


def test_without_a_budget_stacks_double_as_before(
    backbone: VisionTransformer, ckpts: list[AdapterCheckpoint]
) -> None:
    s, h = _sizes(ckpts[0])
    eng = _engine(backbone, None, capacity=2)
    assert eng.bank.capacity == 2
    for ckpt, capacity in zip(ckpts, [2, 2, 4, 4, 8, 8], strict=True):
        eng.load_adapter(ckpt).result(timeout=10)
        assert _capacity(eng) == capacity
    assert eng.tier_stats() == DeviceTierStats(None, 8 * s + 6 * h, 6 * (s + h), 6)


def test_churn_never_allocates_over_the_budget(
    backbone: VisionTransformer, ckpts: list[AdapterCheckpoint]
) -> None:
    """~200 loads and unloads over two stacks (two LoRA ranks) competing for one budget; a
    refused load evicts a random resident, as the registry does."""
    wider = [
        make_checkpoint(backbone, f"w{i}", method="lora", config=WIDER, seed=10 + i)
        for i in range(2)
    ]
    pool = [*ckpts[:3], *wider]
    s, h = _sizes(ckpts[0])
    budget = 9 * s + 4 * h
    eng = _engine(backbone, budget, capacity=2)
    rng = random.Random(0)
    resident: list[str] = []
    loaded = refused = 0
    for step in range(200):
        if resident and rng.random() < 0.4:
            eng.unload_adapter(resident.pop(rng.randrange(len(resident)))).result(timeout=10)
        else:
            error = eng.load_adapter(rng.choice(pool), f"x{step}").exception(timeout=10)
            if error is None:
                resident.append(f"x{step}")
                loaded += 1
            else:
                assert isinstance(error, BankFull)
                assert "device tier full" in str(error)
                refused += 1
                if resident:
                    victim = resident.pop(rng.randrange(len(resident)))
                    eng.unload_adapter(victim).result(timeout=10)
        assert eng.bank.allocated_bytes() <= budget
        assert eng.tier_stats() == _bank_stats(eng)
        assert sorted(eng.resident()) == sorted(resident)
    assert loaded > 60
    assert refused > 5


def test_tier_stats_read_from_another_thread_match_the_bank(
    backbone: VisionTransformer, ckpts: list[AdapterCheckpoint]
) -> None:
    s, h = _sizes(ckpts[0])
    budget = 5 * s + 5 * h
    eng = _engine(backbone, budget, capacity=2)
    eng.start()
    try:
        read = _reader(eng)
        assert read() == DeviceTierStats(budget, 0, 0, 0)
        expected = [(2, 1), (2, 2), (4, 3)]  # (capacity, adapters) after each load
        for ckpt, (capacity, n) in zip(ckpts[:3], expected, strict=True):
            eng.load_adapter(ckpt).result(timeout=10)
            stats = read()  # read as the future completed: the worker refreshed before
            assert stats == DeviceTierStats(budget, capacity * s + n * h, n * (s + h), n)
            assert stats == _bank_stats(eng)
        eng.unload_adapter(ckpts[1].manifest.id).result(timeout=10)
        assert read() == DeviceTierStats(budget, 4 * s + 2 * h, 2 * (s + h), 2) == _bank_stats(eng)
        eng.submit(torch.randn(1, 128, 128), ckpts[0].manifest.id).result(timeout=30)
        assert read() == _bank_stats(eng)  # a batch changes nothing
        assert read() is read()  # a snapshot, not a computation per read
    finally:
        eng.stop()


def test_answers_after_a_capped_growth_equal_the_plainalone_logits(
    backbone: VisionTransformer, ckpts: list[AdapterCheckpoint]
) -> None:
    s, h = _sizes(ckpts[0])
    eng = _engine(backbone, 5 * s + 5 * h, capacity=2)
    eng.start()
    try:
        for ckpt in ckpts[:5]:
            eng.load_adapter(ckpt).result(timeout=10)
        assert _capacity(eng) == 5
        features = torch.randn(5, 128, 128, generator=torch.Generator().manual_seed(3))
        futures = [eng.submit(features[i : i + 1], c.manifest.id) for i, c in enumerate(ckpts[:5])]
        for i, (ckpt, future) in enumerate(zip(ckpts, futures, strict=False)):
            out = future.result(timeout=60)
            ref = alone_logits(backbone, ckpt, features[i])
            torch.testing.assert_close(out[0], ref, atol=2e-5, rtol=1e-4)
    finally:
        eng.stop()


def _reader(eng: Engine) -> Callable[[], DeviceTierStats]:
    """Read ``eng.tier_stats()`` on a thread of its own (as the metrics collector does)."""

    def read() -> DeviceTierStats:
        out: list[DeviceTierStats] = []
        thread = threading.Thread(target=lambda: out.append(eng.tier_stats()))
        thread.start()
        thread.join(timeout=10)
        return out[0]

    return read
