"""Opening an ONNX Runtime session for a device, and one run with tensors bound in place.

CPU: ``CPUExecutionProvider`` with the engine's thread count. CUDA: ``CUDAExecutionProvider``
on the torch device, running on torch's current stream of that device (so ORT's kernels are
ordered with the bank's slot copies and the heads, with no host synchronisation), optionally
behind ``TensorrtExecutionProvider`` with its engine cache in the graph cache directory. Every
input and output is a torch tensor bound by pointer (IOBinding): nothing is copied in or out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["open_session", "providers_for", "run_bound"]

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


def providers_for(
    device: torch.device, *, tensorrt: bool, fp16: bool, cache_dir: Path
) -> list[Any]:
    """Execution providers, best first, for ``device``."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(torch.device("cuda", index)).cuda_stream
    cuda = {
        "device_id": index,
        "has_user_compute_stream": "1",
        "user_compute_stream": str(stream),
    }
    out: list[Any] = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    if tensorrt:
        trt = {
            "device_id": index,
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir / "tensorrt"),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir / "tensorrt"),
            "has_user_compute_stream": "1",
            "user_compute_stream": str(stream),
        }
        out.insert(0, ("TensorrtExecutionProvider", trt))
    return out


def open_session(
    path: Path,
    *,
    device: torch.device,
    threads: int,
    tensorrt: bool = False,
    fp16: bool = False,
    cache_dir: Path,
) -> Any:
    """An inference session for the graph at ``path`` on ``device``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = providers_for(device, tensorrt=tensorrt, fp16=fp16, cache_dir=cache_dir)
    if tensorrt:
        (cache_dir / "tensorrt").mkdir(parents=True, exist_ok=True)
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def _where(t: Tensor) -> tuple[str, int]:
    if t.device.type == "cuda":
        return "cuda", t.device.index if t.device.index is not None else 0
    return "cpu", 0


def run_bound(
    session: Any,
    inputs: Sequence[tuple[str, Tensor]],
    outputs: Sequence[tuple[str, Tensor]],
    device: torch.device,
) -> None:
    """Run ``session`` reading ``inputs`` and writing ``outputs`` in place (same shapes and
    dtypes as the graph's); the tensors must stay alive until this returns, which they do."""
    binding = session.io_binding()
    for name, t in inputs:
        kind, index = _where(t)
        binding.bind_input(name, kind, index, _NP[t.dtype], list(t.shape), t.data_ptr())
    for name, t in outputs:
        kind, index = _where(t)
        binding.bind_output(name, kind, index, _NP[t.dtype], list(t.shape), t.data_ptr())
    session.run_with_iobinding(binding)
