"""The backbone pass of :class:`~lookaside.model.MultiAdapterModel` through ONNX Runtime.

:class:`OrtFeatures` is the model's feature runner: given a batch and its
:class:`~lookaside.bank.route.RowRoute` it returns the final tokens, computed by an ONNX Runtime
session whose inputs are the spectrogram, each stack's routing and each stack's slot tensors,
bound where the bank keeps them (:mod:`lookaside.onnx.graph`). The heads, the ``clip`` site of
audio-visual adapters and everything else stay in the model.

Graphs: one per *family* (task kind, window, prompt layout) at a time, carrying every stack of
the bank that rows of that family can use. When the bank gains a stack signature the family's
graph lacks, a new graph is built (exported, quantised, cached on disk) on the one
``lookaside-export`` thread, and until it is ready the batches that need the new stack run in
eager PyTorch (this returns None): same answers in fp32, nothing waits on an export. A batch
whose stacks the current graph has keeps using it; a stack the bank dropped is fed a zero
placeholder. A hot swap, rollback, eviction or reload changes slot *values* only: never a graph.

Threads: :meth:`features` and :meth:`features_av` run on the engine worker (they read the bank's
slot tensors between the bank commands that the same thread applies). The export thread starts
a child process that exports (the exporter is not thread-safe next to eager PyTorch), then
quantises and opens the session; it reads only the stack signatures it was handed. ``_graphs`` and
``_pending`` are shared between the two under ``_lock``.

CUDA: the session runs on the torch device's current stream (``user_compute_stream``), so it is
ordered after the slot copies the bank published and before the heads that read its output;
inputs and outputs are bound in place on the device (IOBinding), with no host round trip.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lookaside.bank.routing import prompt_key
from lookaside.onnx.cache import GraphCache
from lookaside.onnx.export import GraphSpec, StackSignature, export_graph, graph_key
from lookaside.onnx.graph import ROUTING
from lookaside.onnx.quantize import quantize_backbone
from lookaside.onnx.session import open_session, run_bound
from lookaside.onnx.worker import export_in_child
from lookaside.sites import TokenLayout

if TYPE_CHECKING:
    import onnxruntime as ort

    from lookaside.adapters.stack import AdapterStack
    from lookaside.backbone import VisionTransformer
    from lookaside.backbone_config import BackboneConfig
    from lookaside.bank import AdapterBank
    from lookaside.bank.route import RouteGroup, RowRoute

__all__ = ["OrtFeatures", "Precision"]

log = logging.getLogger("lookaside.onnx")
Precision = Literal["fp32", "int8", "fp16"]


@dataclass
class _Graph:
    spec: GraphSpec
    session: ort.InferenceSession
    keys: list[str]
    """Stack keys in graph order."""
    shapes: list[list[tuple[str, tuple[int, ...]]]]
    """Per stack: (parameter name, shape of one slot)."""
    placeholders: dict[tuple[int, str], Tensor] = field(default_factory=dict)


class OrtFeatures:
    """Feature runner on ONNX Runtime (see the module docstring).

    Args:
        backbone: the engine's frozen backbone (read, never modified; export copies it).
        bank: the engine's adapter bank (its slot tensors are bound as graph inputs).
        cache_dir: where graphs are kept across restarts.
        precision: ``fp32``; ``int8`` (CPU: int8 backbone weights); ``fp16`` (CUDA).
        tensorrt: put TensorRT's execution provider first on CUDA (engines cached in
            ``cache_dir/tensorrt``).
        threads: ONNX Runtime intra-op threads (None: torch's thread count).
        background: build graphs on the export thread (False: inline, for tests and tools).
        max_graphs: sessions kept open (each holds a copy of the backbone's weights); the least
            recently used family is closed past it (reopened from the disk cache when needed).
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        bank: AdapterBank,
        *,
        cache_dir: Path,
        precision: Precision = "fp32",
        tensorrt: bool = False,
        threads: int | None = None,
        background: bool = True,
        max_graphs: int = 4,
    ) -> None:
        self.backbone = backbone
        self.bank = bank
        self.device = bank.device
        self.precision = precision
        self.tensorrt = tensorrt
        self.threads = threads or torch.get_num_threads()
        self.cache = GraphCache(cache_dir)
        self._fingerprint = backbone.fingerprint()
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._lock = threading.Lock()
        self._graphs: OrderedDict[tuple[object, ...], _Graph] = OrderedDict()
        self.max_graphs = max_graphs
        self._pending: dict[str, Future[None]] = {}
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="lookaside-export") if background else None
        )
        self._cast: dict[int, tuple[tuple[int, int], Tensor]] = {}
        self._used: set[int] = set()
        self.runs = 0
        self.fallbacks = 0
        """Batches this runner left to eager PyTorch (a graph was still being built)."""
        self.failures: list[str] = []

    # -- public --------------------------------------------------------------------------------
    def features(self, spec: Tensor, route: RowRoute) -> tuple[Tensor, TokenLayout] | None:
        """Final tokens of ``spec`` ``[n, frames, mel]`` with ``route``'s adapters, or None when
        no graph is ready for the stacks this batch uses (the caller runs eager PyTorch)."""
        stacks = dict(self.bank.stack_items())  # one snapshot per batch
        routed = _routed(route, stacks)
        want = self._spec("clip", spec, None, route, stacks)
        graph = self._graph_for(want, routed)
        if graph is None:
            return None
        cfg = self.backbone.cfg
        layout = TokenLayout(
            cfg.num_prefix_tokens, route.num_prompts, cfg.grid_for(spec.shape[2], spec.shape[1])
        )
        (tokens,) = self._run(graph, [spec], routed, stacks, [layout])
        return tokens, layout

    def features_av(
        self, spec: Tensor, pixels: Tensor, route: RowRoute
    ) -> tuple[tuple[Tensor, TokenLayout], tuple[Tensor, TokenLayout]] | None:
        """Both streams' final tokens (see ``forward_features_av``), or None as in
        :meth:`features`."""
        stacks = dict(self.bank.stack_items())
        routed = _routed(route, stacks)
        want = self._spec("av_events", spec, pixels, route, stacks)
        graph = self._graph_for(want, routed)
        if graph is None:
            return None
        cfg = self.backbone.cfg
        audio = TokenLayout(cfg.num_prefix_tokens, 0, cfg.grid_for(spec.shape[2], spec.shape[1]))
        visual = TokenLayout(cfg.num_prefix_tokens, 0, _image_grid(cfg, pixels), "visual")
        a, v = self._run(graph, [spec, pixels], routed, stacks, [audio, visual])
        return (a, audio), (v, visual)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: backbone passes on a graph and in eager PyTorch, graphs
        exported, reused from the cache, being built, and failed."""
        with self._lock:
            building, failures = len(self._pending), len(self.failures)
        return {
            "graph_runs": self.runs,
            "eager_batches": self.fallbacks,
            "graphs_built": self.cache.builds,
            "graphs_reused": self.cache.reused,
            "graphs_building": building,
            "failures": failures,
        }

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no graph is being built (True) or ``timeout`` seconds pass (False)."""
        with self._lock:
            pending = list(self._pending.values())
        for future in pending:
            try:
                future.result(timeout=timeout)
            except TimeoutError:
                return False
            except Exception:  # recorded in failures by the build itself
                pass
        return True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- graphs --------------------------------------------------------------------------------
    def _spec(
        self,
        task: str,
        spec: Tensor,
        pixels: Tensor | None,
        route: RowRoute,
        stacks: dict[str, AdapterStack],
    ) -> GraphSpec:
        """The graph this batch's family would have with every stack of the bank it can use."""
        depth = self.backbone.cfg.depth
        key = (route.num_prompts, route.prompt_start if route.num_prompts else 0)
        signatures = tuple(
            StackSignature.of(k, s)
            for k, s in sorted(stacks.items())
            if s.method.tasks[0] == task and prompt_key(s.config, depth) == key
        )
        image = None if pixels is None else (int(pixels.shape[-2]), int(pixels.shape[-1]))
        frames, mel = int(spec.shape[-2]), int(spec.shape[-1])
        return GraphSpec(task, frames, mel, image, *key, signatures, _name(self._dtype))

    def _graph_for(self, want: GraphSpec, routed: dict[str, RouteGroup]) -> _Graph | None:
        with self._lock:
            graph = self._graphs.get(want.family())
            if graph is not None:
                self._graphs.move_to_end(want.family())
            if graph is None or not set(want.stacks) <= set(graph.spec.stacks):
                # a new signature; a dropped stack keeps its place (a zero placeholder) until then
                self._schedule(want)
                graph = self._graphs.get(want.family())  # built already when inline
            if graph is None:
                self.fallbacks += 1
                return None
            if not set(routed) <= set(graph.keys):
                self.fallbacks += 1
                return None
            return graph

    def _schedule(self, spec: GraphSpec) -> None:
        """Start building ``spec``'s graph unless it is being built (lock held)."""
        key = graph_key(spec, self._fingerprint, self.precision)
        if key in self._pending or key in self.failures:
            return
        if self._pool is None:
            future: Future[None] = Future()
            self._pending[key] = future
            self._lock.release()
            try:
                self._build(spec, key)
            except Exception:  # logged and recorded by _build: its batches stay on PyTorch
                pass
            finally:
                self._lock.acquire()
                future.set_result(None)
            return
        log.info(
            "building the ONNX Runtime graph %s (%s, %d adapter stacks, %s); batches that need "
            "it run on PyTorch until it is ready",
            key,
            spec.task,
            len(spec.stacks),
            self.precision,
        )
        self._pending[key] = self._pool.submit(self._build, spec, key)

    def _build(self, spec: GraphSpec, key: str) -> None:
        """Export (or reuse) the graph, quantise it for int8, open a session, publish it."""
        try:
            session = self._open(spec)
        except Exception as exc:
            log.exception("could not build the ONNX graph %s; its batches stay on PyTorch", key)
            with self._lock:
                self.failures.append(key)
                self._pending.pop(key, None)
            raise RuntimeError(f"graph {key}: {exc}") from exc
        names = [i.name for i in session.get_inputs()]
        shapes = [
            [(n, _slot_shape(session, f"s{k}.{n}")) for n in _params_of(names, k)]
            for k in range(len(spec.stacks))
        ]
        graph = _Graph(spec, session, [s.key for s in spec.stacks], shapes)
        log.info("ONNX Runtime graph %s is serving (%s)", key, ", ".join(session.get_providers()))
        with self._lock:
            self._graphs[spec.family()] = graph
            self._graphs.move_to_end(spec.family())
            while len(self._graphs) > self.max_graphs:  # each session holds the backbone
                family, _ = self._graphs.popitem(last=False)
                log.info("closed the least recently used ONNX Runtime graph %s", family)
            self._pending.pop(key, None)

    def _open(self, spec: GraphSpec) -> ort.InferenceSession:
        base = self.cache.get_or_build(
            graph_key(spec, self._fingerprint, "fp32" if spec.dtype == "float32" else "fp16"),
            spec,
            lambda tmp: self._export(spec, tmp),
        )
        path = base
        if self.precision == "int8":
            path = self.cache.get_or_build(
                graph_key(spec, self._fingerprint, "int8"),
                spec,
                lambda tmp: quantize_backbone(base, tmp),
            )
        return open_session(
            path,
            device=self.device,
            threads=self.threads,
            tensorrt=self.tensorrt,
            fp16=self.precision == "fp16",
            cache_dir=self.cache.root,
        )

    def _export(self, spec: GraphSpec, out: Path) -> None:
        """In a child process when building in the background (the exporter is not safe beside
        other threads running PyTorch: :mod:`lookaside.onnx.worker`); inline otherwise."""
        if self._pool is None:
            export_graph(self.backbone, spec, out)
        else:
            export_in_child(
                self.backbone, spec, out, root=self.cache.root, fingerprint=self._fingerprint
            )

    # -- one run -------------------------------------------------------------------------------
    def _run(
        self,
        graph: _Graph,
        streams: list[Tensor],
        routed: dict[str, RouteGroup],
        stacks: dict[str, AdapterStack],
        layouts: list[TokenLayout],
    ) -> list[Tensor]:
        n = int(streams[0].shape[0])
        feeds: list[tuple[str, Tensor]] = [
            (name, self._as(t)) for name, t in zip(("spec", "pixels"), streams, strict=False)
        ]
        for k, key in enumerate(graph.keys):
            group = routed.get(key)
            if group is None:
                zero = torch.zeros(1, dtype=torch.long, device=self.device)
                routing = [zero, zero, torch.zeros(1, dtype=self._dtype, device=self.device)]
            else:
                rows = group.rows if group.rows is not None else torch.arange(n, device=self.device)
                scale = torch.ones(rows.shape[0], dtype=self._dtype, device=self.device)
                routing = [rows, group.index.slots, scale]
            feeds += zip((f"s{k}.{name}" for name in ROUTING), routing, strict=True)
            stack = stacks.get(key)
            params = dict(stack.named_parameters()) if stack is not None else {}
            for name, shape in graph.shapes[k]:
                p = params.get(name)
                tensor = self._as(p) if p is not None else self._placeholder(graph, k, name, shape)
                feeds.append((f"s{k}.{name}", tensor))
        D = self.backbone.cfg.embed_dim
        outs = [
            torch.empty(n, lay.num_tokens, D, dtype=self._dtype, device=self.device)
            for lay in layouts
        ]
        names = [o.name for o in graph.session.get_outputs()]
        self._cast = {k: v for k, v in self._cast.items() if k in self._used}
        self._used.clear()
        run_bound(graph.session, feeds, list(zip(names, outs, strict=True)), self.device)
        self.runs += 1
        return [o.float() for o in outs]

    def _as(self, t: Tensor) -> Tensor:
        """``t`` in the graph's dtype, contiguous; fp16 copies of slot tensors are cached per
        tensor version (a swap bumps the version, so the next run re-casts)."""
        if t.dtype == self._dtype or not t.is_floating_point():
            return t.detach().contiguous()
        stamp = (t.data_ptr(), t._version)
        self._used.add(id(t))
        cached = self._cast.get(id(t))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        out = t.detach().to(self._dtype).contiguous()
        self._cast[id(t)] = (stamp, out)
        return out

    def _placeholder(self, graph: _Graph, k: int, name: str, shape: tuple[int, ...]) -> Tensor:
        key = (k, name)
        if key not in graph.placeholders:
            graph.placeholders[key] = torch.zeros(
                (1, *shape), dtype=self._dtype, device=self.device
            )
        return graph.placeholders[key]


def _routed(route: RowRoute, stacks: dict[str, AdapterStack]) -> dict[str, RouteGroup]:
    """Stack key -> the route's group for it (a routed stack is in the bank: the route holds
    its slots)."""
    key_of = {id(s): k for k, s in stacks.items()}
    return {key_of[id(g.stack)]: g for g in route.groups}


def _params_of(names: list[str], k: int) -> list[str]:
    prefix = f"s{k}."
    routing = {prefix + name for name in ROUTING}
    return [n.removeprefix(prefix) for n in names if n.startswith(prefix) and n not in routing]


def _slot_shape(session: ort.InferenceSession, name: str) -> tuple[int, ...]:
    (inp,) = [i for i in session.get_inputs() if i.name == name]
    return tuple(int(d) for d in inp.shape[1:])


def _image_grid(cfg: BackboneConfig, pixels: Tensor) -> tuple[int, int]:
    p = cfg.patch_size
    sf, st = cfg.patch_stride
    return (int(pixels.shape[-2]) - p) // sf + 1, (int(pixels.shape[-1]) - p) // st + 1


def _name(dtype: torch.dtype) -> str:
    return "float16" if dtype == torch.float16 else "float32"
