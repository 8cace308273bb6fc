"""What one graph is (:class:`GraphSpec`), its cache key, and exporting it to an ONNX file.

A graph is fixed by: the task kind (one stream, or audio-visual with two), the input window
(frames x mel bins; the frame size of a video), the prompt layout of its rows, and the *stacks*
it carries (method + config: their signatures, in a stable order). Slot counts are not part of
it: every slot axis is dynamic, so a stack growing to more slots, a hot swap, a rollback, an
eviction or a reload never needs a new graph. Only a new stack signature does.

Export runs ``torch.onnx.export(dynamo=True)`` on a private copy of the backbone and freshly
allocated two-slot stacks (shapes only: the slot tensors are inputs), because export swaps the
parameters of the module it traces, and the engine's own modules keep serving meanwhile.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.export import Dim

from lookaside.adapters import get_method
from lookaside.adapters.stack import AdapterStack
from lookaside.backbone import VisionTransformer
from lookaside.onnx.graph import ROUTING, RoutedFeatures

__all__ = ["OPSET", "GraphSpec", "StackSignature", "export_graph", "graph_key"]

log = logging.getLogger("lookaside.onnx")

OPSET = 18
"""ONNX opset of exported graphs (part of the cache key)."""
FORMAT = 2
"""Version of this module's graph layout (inputs, names); bump to invalidate every cache."""
MAX_ROWS = 4096
"""Upper bound the exporter is told for the batch and per-stack row axes."""
MAX_SLOTS = 1 << 16
"""Upper bound the exporter is told for a slot axis."""


@dataclass(frozen=True)
class StackSignature:
    """One stack of a graph: the bank's stack key, its method and config (JSON)."""

    key: str
    method: str
    config: str

    @staticmethod
    def of(key: str, stack: AdapterStack) -> StackSignature:
        return StackSignature(key, stack.method.name, stack.config.model_dump_json())


@dataclass(frozen=True)
class GraphSpec:
    """Everything that fixes one exported graph (see the module docstring)."""

    task: str
    """Task kind name: ``clip`` (one stream) or ``av_events`` (audio and visual streams)."""
    frames: int
    mel: int
    image: tuple[int, int] | None
    """Frame size ``(H, W)`` of the visual stream (audio-visual graphs only)."""
    num_prompts: int
    prompt_start: int
    stacks: tuple[StackSignature, ...]
    dtype: str = "float32"
    """Compute dtype of the graph: ``float32`` or ``float16`` (CUDA)."""

    @property
    def audio_visual(self) -> bool:
        return self.image is not None

    def family(self) -> tuple[object, ...]:
        """What two graphs must share for one to stand in for the other (all but stacks)."""
        return (self.task, self.frames, self.mel, self.image, self.num_prompts, self.prompt_start)


def graph_key(spec: GraphSpec, fingerprint: str, precision: str) -> str:
    """Cache key: the graph, the backbone's fingerprint, the precision, the opset, this module's
    layout and the onnxruntime and torch versions (a change in any gives another file)."""
    import onnxruntime

    blob = json.dumps(
        {
            "spec": asdict(spec),
            "fingerprint": fingerprint,
            "precision": precision,
            "opset": OPSET,
            "format": FORMAT,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _stacks_for(spec: GraphSpec, backbone: VisionTransformer) -> list[AdapterStack]:
    out = []
    for sig in spec.stacks:
        method = get_method(sig.method)
        config = method.parse_config(json.loads(sig.config))
        out.append(
            AdapterStack.allocate(
                method, config, backbone.cfg, 2, torch.device("cpu"), _dtype(spec.dtype)
            )
        )
    return out


def _dtype(name: str) -> torch.dtype:
    return torch.float16 if name == "float16" else torch.float32


def export_graph(backbone: VisionTransformer, spec: GraphSpec, path: Path) -> float:
    """Write ``spec``'s graph to ``path`` (one self-contained file); returns the seconds taken.

    Long because it assembles the example inputs and their dynamic axes next to each other.
    """
    started = time.perf_counter()
    dtype = _dtype(spec.dtype)
    private = copy.deepcopy(backbone).to(device="cpu", dtype=dtype).eval()
    stacks = _stacks_for(spec, private)
    module = RoutedFeatures(
        private,
        stacks,
        audio_visual=spec.audio_visual,
        num_prompts=spec.num_prompts,
        prompt_start=spec.prompt_start,
    ).eval()
    rows = 2  # a dynamic axis must not be traced at size 0 or 1 (those specialise)
    batch = Dim("batch", min=1, max=MAX_ROWS)
    inputs: list[Tensor] = [torch.randn(rows, spec.frames, spec.mel, dtype=dtype)]
    axes: list[dict[int, Dim]] = [{0: batch}]
    if spec.image is not None:
        inputs.append(torch.randn(rows, 3, *spec.image, dtype=dtype))
        axes.append({0: batch})
    for k, stack in enumerate(stacks):
        routed = Dim(f"rows{k}", min=1, max=MAX_ROWS)
        slots = Dim(f"slots{k}", min=1, max=MAX_SLOTS)
        inputs += [torch.arange(rows), torch.arange(rows), torch.ones(rows, dtype=dtype)]
        axes += [{0: routed}] * len(ROUTING)
        for _, p in stack.named_parameters():
            inputs.append(torch.randn(rows, *p.shape[1:], dtype=dtype) * 0.02)
            axes.append({0: slots})
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter warns about its own internals (deprecated pytree APIs, dynamic-shape renames):
    # noise to an operator, and errors under a warnings-as-errors test run.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs),
            str(path),
            input_names=module.input_names(),
            output_names=module.output_names(),
            dynamic_shapes=(tuple(axes),),
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    seconds = time.perf_counter() - started
    log.info(
        "exported the %s graph with %d adapter stacks (%s) in %.1f s",
        spec.task,
        len(spec.stacks),
        spec.dtype,
        seconds,
    )
    return seconds
