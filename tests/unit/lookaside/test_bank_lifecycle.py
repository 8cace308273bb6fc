"""The bank's slot lifecycle under concurrent use (NOTES §5, issue 7 item 1).

reserve -> load -> publish; routes hold the slots they read; a removed adapter's slot is zeroed
and reused only after its last route is released; capacity is explicit (BankFull, grow between
batches); one lock guards the bookkeeping, so threads can add and remove while a batch runs.
"""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from lookaside.adapters import HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.bank import AdapterBank
from lookaside.errors import AdapterNotFound, BankFull, ConfigError, InvalidCheckpoint
from lookaside.model import MultiAdapterModel
from tests.support import bank_bookkeeping, randomise

FRAMES = 64
LOAA = {"rank": 3, "kernels": "attn:T,ffn:F"}
HEAD = HeadConfig(num_classes=3)


def _bank(backbone: VisionTransformer, capacity: int, **kw: object) -> AdapterBank:
    return AdapterBank.for_backbone(backbone, capacity=capacity, **kw)


def _add(bank: AdapterBank, adapter_id: str, seed: int) -> None:
    bank.add(adapter_id, "loaa", LOAA, HEAD)
    randomise(bank, adapter_id, seed)


def _slot_is_zero(bank: AdapterBank, slot: int) -> bool:
    stack = next(iter(bank.stacks.values()))
    return all(p[slot].abs().sum() == 0 for p in stack.parameters())


def test_held_route_keeps_its_weights_while_threads_add_and_remove(
    tiny_backbone: VisionTransformer,
) -> None:
    """The vLLM/LoRAX fault: a slot reused under a running batch. Here 'a' is removed and 'c'
    added by other threads while a route for 'a' is held: 'c' gets another slot, and the held
    route keeps computing exactly a's output until it is released."""
    bank = _bank(tiny_backbone, capacity=3)
    _add(bank, "a", 1)
    _add(bank, "b", 2)
    spec = torch.randn(2, FRAMES, 128)
    route = bank.route(["a", "a"])
    slot_a = bank.entries["a"].slot
    with torch.no_grad():
        expected, _ = tiny_backbone.forward_features(spec, route)
    donor = _bank(tiny_backbone, capacity=1)
    _add(donor, "c", 3)
    tensors_c = donor.adapter_tensors("c")

    stop = threading.Event()

    def churn() -> int:
        bank.remove("a")
        bank.add("c", "loaa", LOAA, HEAD, tensors_c)
        cycles = 0
        while not stop.is_set():  # other adapters come and go in the remaining capacity
            with pytest.raises(BankFull, match="retired until their routes are released"):
                bank.add("x", "loaa", LOAA, HEAD, tensors_c)
            bank.remove("c")
            bank.add("c", "loaa", LOAA, HEAD, tensors_c)
            cycles += 1
        return cycles

    with ThreadPoolExecutor(max_workers=1) as pool:
        job = pool.submit(churn)
        outputs = []
        with torch.no_grad():
            for _ in range(6):
                got, _ = tiny_backbone.forward_features(spec, route)
                outputs.append(got)
        while "c" not in bank and not job.done():
            time.sleep(0.001)
        with torch.no_grad():
            outputs.append(tiny_backbone.forward_features(spec, route)[0])
        stop.set()
        assert job.result() >= 0
    assert "a" not in bank
    assert bank.entries["c"].slot != slot_a
    for got in outputs:
        assert torch.equal(got, expected)
    with pytest.raises(AdapterNotFound, match="'a' is not loaded"):
        bank.route(["a"])
    assert not _slot_is_zero(bank, slot_a)  # retired, not yet zeroed: the route still reads it

    route.release()
    assert _slot_is_zero(bank, slot_a)
    bank.add("d", "loaa", LOAA, HEAD)  # the freed slot is reused only now
    assert bank.entries["d"].slot == slot_a


def test_full_capacity_waits_for_the_release(tiny_backbone: VisionTransformer) -> None:
    """With every slot taken, removing a held adapter frees nothing until its route ends."""
    bank = _bank(tiny_backbone, capacity=2)
    _add(bank, "a", 1)
    _add(bank, "b", 2)
    with bank.route(["a", "b"]) as route:
        bank.remove("a")
        with pytest.raises(BankFull, match=r"AdapterBank\(capacity=\.\.\.\)"):
            bank.add("c", "loaa", LOAA, HEAD)
        assert bank.free_slots("loaa", LOAA) == 0
        assert not route.released
    assert route.released
    assert bank.free_slots("loaa", LOAA) == 1
    bank.add("c", "loaa", LOAA, HEAD)


def test_concurrent_adds_of_a_new_config_create_one_stack(
    tiny_backbone: VisionTransformer,
) -> None:
    threads = 8
    bank = _bank(tiny_backbone, capacity=threads)
    created: list[str] = []
    original = bank._create_stack

    def slow_create(*args: object, **kw: object) -> object:
        created.append(str(args[0]))
        time.sleep(0.02)  # widen the window in which a second creator could slip in
        return original(*args, **kw)  # type: ignore[arg-type]

    bank._create_stack = slow_create  # type: ignore[method-assign,assignment]
    barrier = threading.Barrier(threads)

    def add(i: int) -> int:
        barrier.wait()
        return bank.add(f"t{i}", "loaa", LOAA, HEAD, seed=i).slot

    with ThreadPoolExecutor(max_workers=threads) as pool:
        slots = list(pool.map(add, range(threads)))
    assert len(created) == 1
    assert len(bank.stacks) == 1
    assert sorted(slots) == list(range(threads))
    assert sorted(bank.ids()) == sorted(f"t{i}" for i in range(threads))
    with pytest.raises(BankFull, match=r"bank\.grow\('loaa', config, capacity\)"):
        bank.add("one-too-many", "loaa", LOAA, HEAD)


def test_concurrent_loads_and_routes_stay_consistent(tiny_backbone: VisionTransformer) -> None:
    """Many threads load, route (holding) and remove at once; afterwards nothing leaked and the
    survivors compute exactly as before."""
    bank = _bank(tiny_backbone, capacity=4)
    _add(bank, "keep", 7)
    spec = torch.randn(1, FRAMES, 128)
    with torch.no_grad(), bank.route(["keep"]) as r:
        before, _ = tiny_backbone.forward_features(spec, r)
    baseline = bank_bookkeeping(bank)

    def worker(i: int) -> None:
        for j in range(10):
            name = f"w{i}-{j}"
            while True:
                try:
                    bank.add(name, "loaa", LOAA, HEAD, seed=j)
                    break
                except BankFull:
                    time.sleep(0.001)
            with bank.route([name, "keep"]):
                pass
            bank.remove(name)

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(worker, range(3)))
    assert bank_bookkeeping(bank) == baseline
    with torch.no_grad(), bank.route(["keep"]) as r:
        after, _ = tiny_backbone.forward_features(spec, r)
    assert torch.equal(before, after)


def test_reserved_adapter_is_not_routable_until_published(
    tiny_backbone: VisionTransformer,
) -> None:
    donor = _bank(tiny_backbone, capacity=1)
    _add(donor, "r", 5)
    tensors = donor.adapter_tensors("r")
    bank = _bank(tiny_backbone, capacity=2)
    reservation = bank.reserve("r", "loaa", LOAA, HEAD)
    assert "r" not in bank
    with pytest.raises(AdapterNotFound, match="still loading"):
        bank.route(["r"])
    with pytest.raises(ConfigError, match="already loaded"):
        bank.reserve("r", "loaa", LOAA, HEAD)
    with pytest.raises(ConfigError, match="cannot publish"):
        bank.publish(reservation)  # not loaded yet
    bank.load(reservation, tensors)
    with pytest.raises(AdapterNotFound):
        bank.route(["r"])
    assert bank.ids() == []
    bank.publish(reservation)
    spec = torch.randn(1, FRAMES, 128)
    with torch.no_grad(), bank.route(["r"]) as a, donor.route(["r"]) as b:
        torch.testing.assert_close(
            tiny_backbone.forward_features(spec, a)[0],
            tiny_backbone.forward_features(spec, b)[0],
            rtol=0,
            atol=0,
        )


def test_load_can_run_on_another_thread(tiny_backbone: VisionTransformer) -> None:
    """The engine reserves and publishes between batches; the copy may run anywhere."""
    bank = _bank(tiny_backbone, capacity=1)
    reservation = bank.reserve("bg", "loaa", LOAA, HEAD)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(bank.load, reservation, None, seed=3).result()
    entry = bank.publish(reservation)
    fresh = _bank(tiny_backbone, capacity=1)
    fresh.add("bg", "loaa", LOAA, HEAD, seed=3)
    for name, tensor in fresh.adapter_tensors("bg").items():
        assert torch.equal(tensor, bank.adapter_tensors("bg")[name]), name
    assert entry.slot == 0


def test_abort_gives_the_slot_back_zeroed(tiny_backbone: VisionTransformer) -> None:
    bank = _bank(tiny_backbone, capacity=2)
    _add(bank, "resident", 1)
    reservation = bank.reserve("gone", "loaa", LOAA, HEAD)
    bank.load(reservation, None, seed=4)  # writes non-zero values into the slot
    assert not _slot_is_zero(bank, reservation.slot)
    assert bank.free_slots("loaa", LOAA) == 0
    bank.abort(reservation)
    bank.abort(reservation)  # idempotent
    assert _slot_is_zero(bank, reservation.slot)
    assert bank.free_slots("loaa", LOAA) == 1
    assert "gone" not in bank
    with pytest.raises(ConfigError, match="cannot publish"):
        bank.publish(reservation)
    bank.add("gone", "loaa", LOAA, HEAD)  # the id and the slot are free again
    # An aborted reservation of a new config leaves no stack behind.
    other = bank.reserve("other", "bottleneck", {"rank": 2}, HEAD)
    assert len(bank.stacks) == 2
    bank.abort(other)
    assert len(bank.stacks) == 1


def test_a_bad_load_leaves_the_reservation_to_abort(tiny_backbone: VisionTransformer) -> None:
    bank = _bank(tiny_backbone, capacity=1)
    reservation = bank.reserve("bad", "loaa", LOAA, HEAD)
    with pytest.raises(InvalidCheckpoint, match="missing tensors"):
        bank.load(reservation, {"head.fc.bias": torch.zeros(3)})
    assert _slot_is_zero(bank, reservation.slot)  # validated before anything was written
    bank.abort(reservation)
    assert len(bank.stacks) == 0


def test_grow_refuses_while_a_route_is_live(tiny_backbone: VisionTransformer) -> None:
    bank = _bank(tiny_backbone, capacity=1)
    _add(bank, "a", 1)
    spec = torch.randn(1, FRAMES, 128)
    route = bank.route(["a"])
    with torch.no_grad():
        before, _ = tiny_backbone.forward_features(spec, route)
    with pytest.raises(ConfigError, match="between batches"):
        bank.grow("loaa", LOAA, 4)
    route.release()
    route.release()  # idempotent
    with pytest.raises(ConfigError, match="can only grow"):
        bank.grow("loaa", LOAA, 0)
    pending = bank.reserve("p", "bottleneck", {"rank": 2}, HEAD)
    with pytest.raises(ConfigError, match="publish or abort"):
        bank.grow("bottleneck", {"rank": 2}, 3)
    bank.abort(pending)
    bank.grow("loaa", LOAA, 4)
    assert bank.free_slots("loaa", LOAA) == 3
    _add(bank, "b", 2)
    with torch.no_grad(), bank.route(["a"]) as r:
        after, _ = tiny_backbone.forward_features(spec, r)
    assert torch.equal(before, after)  # existing slots kept their weights
    # A stack not created yet takes the grown capacity when it is.
    bank.grow("bottleneck", {"rank": 2}, 5)
    assert bank.free_slots("bottleneck", {"rank": 2}) == 5
    bank.add("n", "bottleneck", {"rank": 2}, HEAD)
    assert bank.free_slots("bottleneck", {"rank": 2}) == 4


def test_remove_of_the_last_adapter_frees_the_stack_after_release(
    tiny_backbone: VisionTransformer,
) -> None:
    bank = _bank(tiny_backbone, capacity=2)
    _add(bank, "only", 1)
    held = sum(p.numel() for p in bank.parameters())
    route = bank.route(["only"])
    bank.remove("only")
    assert "only" not in bank
    assert len(bank.stacks) == 1  # the running batch still reads it
    assert sum(p.numel() for p in bank.parameters()) < held  # the head is gone from the bank
    route.release()
    assert len(bank.stacks) == 0
    assert sum(p.numel() for p in bank.parameters()) == 0


def test_a_stack_made_again_starts_at_the_bank_capacity(tiny_backbone: VisionTransformer) -> None:
    """A freed stack's grown size is forgotten: made again, it starts at the bank's capacity
    (an engine with a byte budget may no longer have room for the grown size)."""
    bank = _bank(tiny_backbone, capacity=2)
    bank.grow("loaa", LOAA, 6)
    _add(bank, "a", 1)
    assert bank.stack_capacity("loaa", LOAA) == 6
    bank.remove("a")
    assert len(bank.stacks) == 0
    assert bank.stack_capacity("loaa", LOAA) == 2
    _add(bank, "b", 2)
    assert bank.stack_capacity("loaa", LOAA) == 2


def test_a_dropped_route_is_released_by_the_garbage_collector(
    tiny_backbone: VisionTransformer,
) -> None:
    """Safety net: a route nobody released still gives its slots back once collected."""
    bank = _bank(tiny_backbone, capacity=1)
    _add(bank, "a", 1)
    route = bank.route(["a"])
    bank.remove("a")
    del route
    gc.collect()
    assert bank.free_slots("loaa", LOAA) == 1
    assert len(bank.stacks) == 0


def test_bookkeeping_is_flat_over_many_cycles(tiny_backbone: VisionTransformer) -> None:
    """NOTES §8: unload frees device and host memory; here with held routes in the way."""
    bank = _bank(tiny_backbone, capacity=2)
    _add(bank, "resident", 1)
    donor = _bank(tiny_backbone, capacity=1)
    donor.add("x", "soft_moa", {"num_experts": 2, "rank": 1}, HEAD, seed=2)
    tensors = donor.adapter_tensors("x")
    baseline = bank_bookkeeping(bank)
    params = sum(p.numel() for p in bank.parameters())
    for i in range(20):
        bank.add(f"x{i}", "soft_moa", {"num_experts": 2, "rank": 1}, HEAD, tensors)
        bank.add(f"y{i}", "loaa", LOAA, HEAD)
        route = bank.route([f"x{i}", f"y{i}", "resident"])
        bank.remove(f"x{i}")
        bank.remove(f"y{i}")
        if i % 2:
            route.release()
        else:
            del route  # released when collected (refcounting: at once)
    assert bank.ids() == ["resident"]
    assert bank_bookkeeping(bank) == baseline
    assert sum(p.numel() for p in bank.parameters()) == params


def test_sizes_by_arithmetic(tiny_backbone: VisionTransformer) -> None:
    for dtype, itemsize in ((torch.float32, 4), (torch.bfloat16, 2)):
        bank = _bank(tiny_backbone, capacity=2, dtype=dtype)
        for method, cfg in (("loaa", LOAA), ("linear", {}), ("prompt", {"num_tokens": 2})):
            expected = bank.expected_bytes(method, cfg, HEAD)
            bank.add(method, method, cfg, HEAD)
            tensors = bank.adapter_tensors(method)
            assert bank.adapter_bytes(method) == expected
            assert expected == sum(t.numel() for t in tensors.values()) * itemsize
            assert all(t.dtype == dtype for t in tensors.values())


def test_capacity_defaults_and_refusals(tiny_backbone: VisionTransformer) -> None:
    assert AdapterBank(tiny_backbone.cfg).capacity == 8
    assert AdapterBank(tiny_backbone.cfg, trainable=True).capacity == 1
    with pytest.raises(ConfigError, match="at least 1"):
        AdapterBank(tiny_backbone.cfg, capacity=0)
    bank = AdapterBank.for_backbone(tiny_backbone)
    assert bank.fingerprint == tiny_backbone.fingerprint()
    assert bank.device == next(tiny_backbone.parameters()).device
    assert bank.dtype == torch.float32
    assert bank.free_slots("loaa", LOAA) == 8
    assert bank.free_slots("linear", {}) > 1000  # a head-only method uses no slot
    with pytest.raises(ConfigError, match="no stack"):
        bank.grow("linear", {}, 2)


def test_trainable_bank_never_replaces_a_parameter(tiny_backbone: VisionTransformer) -> None:
    """Issue 7 item 4: a growth used to swap Parameters under the optimiser, which then updated
    orphans. A trainable bank has one slot per stack, refuses to grow, and the optimiser keeps
    updating the very tensors the forward reads."""
    bank = AdapterBank.for_backbone(tiny_backbone, trainable=True)
    bank.add("t", "loaa", LOAA, HeadConfig(num_classes=2), seed=1)
    model = MultiAdapterModel(tiny_backbone, bank)
    params = bank.trainable_parameters("t")
    optimiser = torch.optim.SGD(params, lr=0.01)
    spec = torch.randn(4, FRAMES, 128)
    target = torch.tensor([0, 1, 0, 1])

    def step() -> None:
        optimiser.zero_grad()
        F.cross_entropy(model.logits(spec, "t"), target).backward()
        optimiser.step()

    step()
    with pytest.raises(BankFull):
        bank.add("t2", "loaa", LOAA, HeadConfig(num_classes=2))
    with pytest.raises(ConfigError, match="never grows"):
        bank.grow("loaa", LOAA, 2)
    bank.add("other", "bottleneck", {"rank": 2}, HeadConfig(num_classes=2))
    bank.remove("other")
    snapshot = [p.detach().clone() for p in params]
    with torch.no_grad():
        before = model.logits(spec, "t")
    for _ in range(3):
        step()
    with torch.no_grad():
        after = model.logits(spec, "t")
    assert [id(p) for p in bank.trainable_parameters("t")] == [id(p) for p in params]
    assert all(not torch.equal(p, s) for p, s in zip(params, snapshot, strict=True))
    assert not torch.allclose(before, after, atol=1e-4)  # the forward reads the updated tensors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_load_on_a_side_stream(tiny_backbone: VisionTransformer) -> None:
    """Pinned staging, side-stream copy, publish waits on its event; routes on the device."""
    backbone = build_cuda_copy(tiny_backbone)
    donor = AdapterBank.for_backbone(tiny_backbone, capacity=1)
    _add(donor, "a", 1)
    tensors = donor.adapter_tensors("a")
    bank = AdapterBank.for_backbone(backbone, capacity=2)
    assert bank.device.type == "cuda"
    reservation = bank.reserve("a", "loaa", LOAA, HEAD)
    bank.load(reservation, tensors)
    assert reservation._event is not None
    bank.publish(reservation)
    for name, tensor in bank.adapter_tensors("a").items():
        assert tensor.device.type == "cuda"
        torch.testing.assert_close(tensor.cpu(), tensors[name], rtol=0, atol=0)
    on_device = {k: v.cuda() for k, v in tensors.items()}  # device-to-device on the side stream
    bank.add("a2", "loaa", LOAA, HEAD, on_device)
    del on_device
    for name, tensor in bank.adapter_tensors("a2").items():
        torch.testing.assert_close(tensor.cpu(), tensors[name], rtol=0, atol=0)
    spec = torch.randn(2, FRAMES, 128)
    with torch.no_grad(), bank.route(["a", None]) as gpu, donor.route(["a", None]) as cpu:
        assert gpu.groups[0].index.slots.device.type == "cuda"
        assert gpu.groups[0].rows is not None
        assert gpu.groups[0].rows.device.type == "cuda"
        got = backbone.forward_features(spec.cuda(), gpu)[0]
        expected = tiny_backbone.forward_features(spec, cpu)[0]
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


def build_cuda_copy(backbone: VisionTransformer) -> VisionTransformer:
    copy = VisionTransformer(backbone.cfg)
    copy.load_weights(backbone.state_dict())
    return copy.to("cuda")


def test_a_bank_driven_under_inference_mode_keeps_normal_tensors(
    tiny_backbone: VisionTransformer,
) -> None:
    """A serving loop often runs under torch.inference_mode; adapters it adds must stay
    writable afterwards (inference tensors refuse in-place updates outside that mode)."""
    bank = _bank(tiny_backbone, capacity=1)
    with torch.inference_mode():
        bank.add("a", "loaa", LOAA, HEAD, seed=1)
        with bank.route(["a"]):
            bank.remove("a")
        bank.add("b", "loaa", LOAA, HEAD, seed=1)
        bank.grow("loaa", LOAA, 2)
    assert not any(p.is_inference() for p in bank.parameters())
    randomise(bank, "b", seed=3)  # in-place writes outside inference mode
    bank.add("c", "loaa", LOAA, HEAD)


def test_moving_the_bank_moves_where_new_adapters_go(tiny_backbone: VisionTransformer) -> None:
    bank = _bank(tiny_backbone, capacity=2)
    _add(bank, "a", 1)
    route = bank.route(["a"])
    with pytest.raises(ConfigError, match="between batches"):
        bank.to(torch.bfloat16)
    route.release()
    bank.to(torch.bfloat16)
    assert bank.dtype == torch.bfloat16
    bank.add("b", "loaa", LOAA, HEAD)
    bank.add("c", "bottleneck", {"rank": 2}, HEAD)
    assert {p.dtype for p in bank.parameters()} == {torch.bfloat16}


def test_stack_capacity_counts_every_slot_whatever_its_state(
    tiny_backbone: VisionTransformer,
) -> None:
    bank = _bank(tiny_backbone, 2)
    assert bank.stack_capacity("loaa", LOAA) == 2  # not created yet: what it will have
    _add(bank, "a", seed=1)
    _add(bank, "b", seed=2)
    with bank.route(["a"]):
        bank.remove("a")  # retired while the route holds it
        assert bank.free_slots("loaa", LOAA) == 0
        assert bank.stack_capacity("loaa", LOAA) == 2
    assert bank.free_slots("loaa", LOAA) == 1
    bank.grow("loaa", LOAA, 4)
    assert bank.stack_capacity("loaa", LOAA) == 4
    assert bank.stack_capacity("linear", {}) > 2**40  # a head-only method uses no slot
