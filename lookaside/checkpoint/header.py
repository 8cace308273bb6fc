"""The safetensors header of an adapter's weights, checked before any tensor data is read
(docs/design.md §4).

:func:`parse_header` bounds the header's length before parsing it and checks every tensor's
dtype, shape and byte span and that the tensors tile the data exactly; :func:`check_header`
compares the declared tensors with the expected shapes (:func:`tensor_problems`, shared with the
bank so both refuse the same things in the same words); only then :func:`read_tensors` hands the
bytes to the safetensors library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor

from lookaside.checkpoint.manifest import AdapterManifest
from lookaside.errors import InvalidCheckpoint

__all__ = [
    "FLOAT_DTYPES",
    "MIN_ITEMSIZE",
    "HeaderEntry",
    "check_header",
    "parse_header",
    "read_tensors",
    "tensor_problems",
]

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
"""safetensors header dtypes accepted for adapter tensors (every adapter tensor is a weight)."""
MIN_ITEMSIZE = min(torch.empty(0, dtype=d).element_size() for d in FLOAT_DTYPES.values())
"""Fewest bytes per parameter a valid file can use (F16/BF16): the file size bounds the count."""
_ITEMSIZE = {
    **dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3"), 1),
    **dict.fromkeys(("I16", "U16", "F16", "BF16"), 2),
    **dict.fromkeys(("I32", "U32", "F32"), 4),
    **dict.fromkeys(("I64", "U64", "F64"), 8),
}
"""Bytes per element of every safetensors dtype (to check each tensor's byte span)."""


def tensor_problems(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[tuple[int, ...], str, bool]],
) -> list[str]:
    """Every difference between the tensors an adapter needs and those offered, as messages.

    Shared by the bank (tensors in memory) and the checkpoint loader (a safetensors header, before
    any data is read), so both refuse the same things with the same words.

    Args:
        expected: name -> shape.
        found: name -> (shape, dtype name, is floating point).
    """
    problems: list[str] = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for name in sorted(set(expected) & set(found)):
        shape, dtype, floating = found[name]
        if tuple(shape) != tuple(expected[name]):
            problems.append(f"{name} has shape {list(shape)}, expected {list(expected[name])}")
        if not floating:
            problems.append(f"{name} has dtype {dtype}, expected a floating-point type")
    return problems


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor as a safetensors header describes it (offsets relative to the data)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_header(
    data: bytes | memoryview, *, where: str, max_header_bytes: int
) -> tuple[dict[str, HeaderEntry], int]:
    """The tensors a safetensors buffer declares, and where its data starts; reads no data.

    The 8-byte header length is bounded (by ``max_header_bytes`` and the buffer) before the JSON
    is parsed, so a pickle or random bytes posing as safetensors are refused cheaply.

    Raises:
        InvalidCheckpoint: ``... is not a valid safetensors file: <why>``.
    """

    def bad(why: str) -> InvalidCheckpoint:
        return InvalidCheckpoint(f"{where} is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes is shorter than the 8-byte header length")
    size = int.from_bytes(bytes(data[:8]), "little")
    if size > max_header_bytes:
        raise bad(f"its header claims {size} bytes, over max_header_bytes={max_header_bytes}")
    if 8 + size > len(data):
        raise bad(f"its header claims {size} bytes, past the end of the {len(data)}-byte file")
    try:
        raw = json.loads(bytes(data[8 : 8 + size]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"its header is not UTF-8 JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise bad("its header is not a JSON object")
    entries: dict[str, HeaderEntry] = {}
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        entry = _entry(info)
        if entry is None:
            raise bad(f"tensor {name!r} has no valid dtype/shape/data_offsets")
        need = math.prod(entry.shape) * _ITEMSIZE[entry.dtype]
        if entry.end - entry.begin != need:
            raise bad(
                f"tensor {name!r} spans {entry.end - entry.begin} bytes, but "
                f"{entry.dtype}{list(entry.shape)} needs {need}"
            )
        entries[name] = entry
    _check_layout(entries, len(data) - 8 - size, bad)
    return entries, 8 + size


def _check_layout(
    entries: Mapping[str, HeaderEntry], data_len: int, bad: Callable[[str], InvalidCheckpoint]
) -> None:
    """Tensors must tile the data bytes exactly, in order, as safetensors writes them."""
    position = 0
    for name, entry in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if entry.begin != position or entry.end > data_len:
            raise bad(
                f"tensor {name!r} at bytes [{entry.begin}, {entry.end}) does not follow the "
                f"previous tensor (ends at {position}) within the {data_len} data bytes"
            )
        position = entry.end
    if position != data_len:
        raise bad(f"{data_len - position} bytes after the last tensor")


def _entry(info: object) -> HeaderEntry | None:
    if not isinstance(info, dict):
        return None
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ITEMSIZE or not isinstance(shape, list) or not isinstance(offsets, list):
        return None
    ints = [*shape, *offsets]
    if len(offsets) != 2 or not all(isinstance(v, int) and v >= 0 for v in ints):
        return None
    begin, end = offsets
    if end < begin:
        return None
    return HeaderEntry(dtype, tuple(shape), begin, end)


def check_header(
    manifest: AdapterManifest,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[tuple[int, ...], str]],
) -> None:
    """Compare tensors (name -> (shape, dtype name)) with the expected ones; one message."""
    problems = tensor_problems(
        expected, {n: (shape, dtype, dtype in FLOAT_DTYPES) for n, (shape, dtype) in found.items()}
    )
    if problems:
        raise InvalidCheckpoint(
            f"checkpoint {manifest.id} ({manifest.method}) does not fit its manifest: "
            + "; ".join(problems)
        )


def read_tensors(data: bytes | memoryview, entries: Mapping[str, HeaderEntry]) -> dict[str, Tensor]:
    """Deserialise a buffer whose header already passed :func:`parse_header` and
    :func:`check_header` (so every allocation is bounded by the expected shapes).

    The data itself is read by the safetensors library, never by hand; ``entries`` only checks
    that the library saw the tensors the header check approved.
    """
    try:
        tensors = load_safetensors(bytes(data))
    except SafetensorError as exc:
        raise InvalidCheckpoint(f"the weights are not a valid safetensors file: {exc}") from None
    if sorted(tensors) != sorted(entries):  # the library parsed another header than ours
        raise InvalidCheckpoint("safetensors header changed between validation and reading")
    return tensors
