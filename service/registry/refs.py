"""Adapter references: what a request names (``esc50``, ``esc50@3``, ``esc50@v3``) and the bank
id of a stored version (``esc50@3``).

Threads: pure functions; called on the event loop (every request) and the registry's threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookaside.errors import AdapterNotFound
from service.store import NAME_PATTERN, format_versions

if TYPE_CHECKING:
    from service.store import AdapterStore

__all__ = ["adapter_id", "parse_ref", "resolve_stored"]


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


def resolve_stored(store: AdapterStore, ref: str) -> tuple[str, int]:
    """``name`` / ``name@version`` -> (name, version) of a stored version, from the store's
    in-memory index (O(1), no disk).

    Raises:
        AdapterNotFound: unknown name, unknown version or no active version; the message lists
            what exists.
    """
    name, version = parse_ref(ref)
    if version is not None:
        if store.has_version(name, version):
            return name, version
        raise AdapterNotFound(f"unknown adapter {ref.strip()!r}; {store.describe(name)}")
    stored = store.get(name)
    if stored is not None and stored.active is not None:
        return name, stored.active
    if stored is not None:
        raise AdapterNotFound(
            f"adapter {name!r} has no active version; activate one of "
            f"{format_versions(list(stored.versions), None)} or ask for 'name@version'"
        )
    raise AdapterNotFound(f"unknown adapter {name!r}; {store.describe(name)}")
