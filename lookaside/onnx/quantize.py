"""int8 weights for the frozen backbone, with onnxruntime's own quantisation tool.

Dynamic quantisation (weights int8 per output channel, activations quantised per batch at run
time) of the MatMul and Gemm nodes whose weight is a *constant*: those are the frozen backbone's
projections. The adapters' slot tensors are graph inputs, not constants, so they and every
matmul that reads them (and attention's two activation-by-activation matmuls) stay float32:
``MatMulConstBOnly`` says exactly that. Agreement with float32 is measured in the tests and the
benchmark, not assumed.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

__all__ = ["quantize_backbone"]


def _not_preprocessing_advice(record: logging.LogRecord) -> bool:
    """The tool logs, on the root logger, advice to run its shape-inference pre-processing:
    dynamic quantisation of MatMul/Gemm weights does not need it."""
    return not record.getMessage().startswith("Please consider to run pre-processing")


def quantize_backbone(source: Path, target: Path) -> float:
    """Write ``source``'s graph with int8 backbone weights to ``target``; returns seconds."""
    started = time.perf_counter()
    root = logging.getLogger()  # a logger's filter sees only records logged on that logger
    root.addFilter(_not_preprocessing_advice)
    try:
        _quantize(source, target)
    finally:
        root.removeFilter(_not_preprocessing_advice)
    return time.perf_counter() - started


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tool's advice to pre-process (shape inference)
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
