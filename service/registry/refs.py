"""Adapter references: what a request names (``esc50``, ``esc50@3``, ``esc50@v3``) and the bank
id of a stored version (``esc50@3``).

Threads: pure functions; called on the event loop (every request) and the registry's threads.
"""

from __future__ import annotations

from lookaside.errors import AdapterNotFound
from service.store import NAME_PATTERN

__all__ = ["adapter_id", "parse_ref"]


def adapter_id(name: str, version: int) -> str:
    """The bank id of a stored version: ``name@version``."""
    return f"{name}@{version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"esc50"`` -> ``("esc50", None)``; ``"esc50@3"`` or ``"esc50@v3"`` -> ``("esc50", 3)``.

    Raises:
        AdapterNotFound: the reference is malformed (the message shows the accepted forms).
    """
    name, sep, version = ref.strip().partition("@")
    number = version[1:] if version[:1] in ("v", "V") else version
    if not NAME_PATTERN.fullmatch(name) or (sep and not (number.isdigit() and int(number) > 0)):
        raise AdapterNotFound(
            f"adapter reference {ref!r} is malformed: use 'name' (its active version) or "
            "'name@version' (e.g. 'esc50@3'); names are 1-64 lower-case letters, digits, '-', '_'"
        )
    return name, (int(number) if sep else None)
