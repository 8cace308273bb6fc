"""Checkpoint validation that allocates nothing an upload controls (NOTES §5).

Shapes an adapter needs come from arithmetic and the ``meta`` device, checked against limits
before any real tensor exists; the same checks serve the bank (tensors in memory) and the
checkpoint loader (a safetensors header, before any data is read).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["tensor_problems"]


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
