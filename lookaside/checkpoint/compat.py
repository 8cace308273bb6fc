"""The one backbone-compatibility check: an adapter runs only on the backbone it was trained on.

Every place that puts an adapter next to a backbone (loading a file, validating an upload, loading
into a bank, reserving a slot in the server) asks :func:`require_backbone`, so the refusal always
reads the same: which adapter, the backbone it was made for, the one it met, and what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookaside.errors import IncompatibleBackbone

if TYPE_CHECKING:
    from lookaside.checkpoint.manifest import AdapterManifest

__all__ = ["require_backbone"]


def require_backbone(
    manifest: AdapterManifest,
    *,
    name: str,
    fingerprint: str,
    source: str | None = None,
    where: str = "this server runs",
) -> None:
    """Refuse ``manifest``'s adapter unless it was made for the backbone ``fingerprint``.

    Args:
        name, fingerprint, source: the backbone the adapter meets (source when known).
        where: who runs that backbone, as the message says it (``this bank serves``).

    Raises:
        IncompatibleBackbone: the fingerprints differ.
    """
    ref = manifest.backbone
    if ref.fingerprint == fingerprint:
        return
    met = f"{name}@{fingerprint}" + (f" (source {source})" if source else "")
    raise IncompatibleBackbone(
        f"checkpoint {manifest.id} was made for backbone {ref.name}@{ref.fingerprint} (source "
        f"{ref.source}); {where} {met}. Load it with the backbone it was trained on, or retrain "
        "it on this one"
    )
