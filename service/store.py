"""The adapter store: versioned adapter checkpoints on disk, written atomically.

Layout (Triton's model repository, with a pointer per name)::

    <root>/<name>/<version>/manifest.json      the manifest, its ``version`` set by the store
    <root>/<name>/<version>/adapter.safetensors the uploaded weights, byte for byte
    <root>/<name>/ACTIVE                        text: the active version of ``name``
    <root>/<name>/LAST                          text: the highest version ever assigned to ``name``

Versions are integers the store assigns on upload: one more than the highest ever assigned to
that name (``LAST``), so a deleted version's number is never reused while the name exists (caches
keyed by ``name@version`` cannot serve a deleted version's results for a new upload). Deleting a
whole name forgets its history: a later upload of that name starts again at 1.

The first version of a name becomes active at once (there is nothing to disrupt); later versions
only when asked (``activate=True`` or :meth:`AdapterStore.activate`). Re-uploading identical
content (same weights sha256, same manifest apart from ``version`` and ``created``) returns the
existing version with ``created=False``.

Durability: a version directory is written by :func:`write_dir_atomic` (temp sibling, fsync,
rename), then ``LAST`` and ``ACTIVE`` by :func:`write_file_atomic`, so a crash leaves either the
whole version or nothing visible, and an acknowledged upload survives a restart. Deletions rename
the version aside before removing it, so a crash mid-delete never leaves half a version. Temp
leftovers (``.<x>.tmp-*``) are invisible to every read and removed by :meth:`cleanup`.

Everything an upload brings is validated by :mod:`lookaside.checkpoint` (schema, name, backbone
fingerprint, size, sha256, safetensors header names/shapes/dtypes, finite values) before anything
on disk changes; a refused upload leaves the store exactly as it was.

Thread-safety: one lock serialises every mutation (so concurrent uploads of one name get distinct
versions). Validation of an upload runs outside the lock; reads take no lock (each file they read
is replaced atomically).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lookaside.backbone import VisionTransformer
from lookaside.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterCheckpoint,
    AdapterManifest,
    CheckpointLimits,
    load_checkpoint,
    load_manifest,
    validate_checkpoint_bytes,
)
from lookaside.checkpoint.atomic import (
    fsync_dir,
    remove_stale_temps,
    write_dir_atomic,
    write_file_atomic,
)
from lookaside.errors import AdapterNotFound, InvalidCheckpoint
from service.errors import PayloadTooLarge, ServiceError

__all__ = [
    "ACTIVE_FILE",
    "DEFAULT_MAX_MANIFEST_BYTES",
    "DEFAULT_MAX_WEIGHTS_BYTES",
    "LAST_FILE",
    "NAME_PATTERN",
    "ActiveVersionConflict",
    "AdapterStore",
    "PutResult",
    "UploadTooLarge",
    "format_versions",
]

ACTIVE_FILE = "ACTIVE"
LAST_FILE = "LAST"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""Adapter names: what :class:`AdapterManifest` accepts; no dots or slashes, so no traversal."""
DEFAULT_MAX_WEIGHTS_BYTES = 256 * 1024 * 1024
"""Largest ``adapter.safetensors`` accepted by default (a LoAA r=72 ViT-B adapter is ~35 MB)."""
DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024
"""A manifest is a few kB; anything larger is refused unread."""
_IGNORED_FOR_IDENTITY = frozenset({"version", "created"})


class UploadTooLarge(PayloadTooLarge):
    """An uploaded file is over the store's size limit (HTTP 413)."""


class ActiveVersionConflict(ServiceError):
    """Deleting the active version was asked without ``force`` (HTTP 409)."""

    status_code = 409


@dataclass(frozen=True)
class PutResult:
    """What :meth:`AdapterStore.put` did."""

    name: str
    version: int
    created: bool
    """False when identical content was already stored as ``version`` (nothing was written)."""
    active: bool
    """Whether ``version`` is the active version after the call."""
    manifest: AdapterManifest
    """The manifest as stored (``version`` set by the store)."""
    checkpoint: AdapterCheckpoint | None = field(default=None, repr=False, compare=False)
    """The upload as validated (stored manifest + its tensors in host memory), so the registry
    can load it without reading and validating it again; None where nothing was validated."""


def format_versions(versions: list[int], active: int | None) -> str:
    """``1, 2, 3 (active: 2)``: for messages that list what exists."""
    if not versions:
        return "none"
    listed = ", ".join(str(v) for v in versions)
    return f"{listed} (active: {active})" if active is not None else f"{listed} (none active)"


class AdapterStore:
    """Versioned adapters under one root directory (see the module docstring for the layout)."""

    def __init__(
        self,
        root: Path,
        *,
        max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_weights_bytes = max_weights_bytes
        self.max_manifest_bytes = max_manifest_bytes
        self.limits = CheckpointLimits(
            max_weights_bytes=max_weights_bytes, max_manifest_bytes=max_manifest_bytes
        )
        """What an adapter may be (sizes, widths, labels, parameters), checked before allocation."""
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names with at least one complete version, sorted."""
        return [
            p.name
            for p in sorted(self.root.iterdir())
            if NAME_PATTERN.fullmatch(p.name) and p.is_dir() and self._versions_in(p)
        ]

    def versions(self, name: str) -> list[int]:
        """Complete versions of ``name``, ascending (``[]`` for an unknown name)."""
        if not NAME_PATTERN.fullmatch(name):
            return []
        return self._versions_in(self.root / name)

    def active(self, name: str) -> int | None:
        """The active version of ``name``, or None (unknown name or no pointer)."""
        if not NAME_PATTERN.fullmatch(name):
            return None
        try:
            text = (self.root / name / ACTIVE_FILE).read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            return None
        if not text.isdigit():
            return None
        version = int(text)
        # The pointer is flipped only to complete versions; a hand-edited one is ignored.
        return version if (self.root / name / str(version) / MANIFEST_FILE).is_file() else None

    def manifest(self, name: str, version: int) -> AdapterManifest:
        """The stored manifest of ``name@version`` (:class:`AdapterNotFound` lists what exists)."""
        return load_manifest(self._version_dir(name, version))

    def load(self, name: str, version: int, *, backbone: VisionTransformer) -> AdapterCheckpoint:
        """``name@version`` read from disk and fully validated against ``backbone`` (any thread)."""
        ckpt = load_checkpoint(
            self._version_dir(name, version), backbone=backbone, limits=self.limits
        )
        if (ckpt.manifest.name, ckpt.manifest.version) != (name, version):
            raise InvalidCheckpoint(
                f"{self.root / name / str(version)} holds {ckpt.manifest.id}, not "
                f"{name}@{version}: the store was edited by hand; delete that version"
            )
        return ckpt

    def describe(self, name: str) -> str:
        """What exists for ``name``, for error messages."""
        versions = self.versions(name)
        if versions:
            return f"versions of {name!r}: {format_versions(versions, self.active(name))}"
        names = self.names()
        listed = ", ".join(names) if names else "none (upload one with POST /adapters)"
        rule = (
            ""
            if NAME_PATTERN.fullmatch(name)
            else " (names are 1-64 lower-case letters, digits, '-' or '_')"
        )
        return f"no adapter named {name!r}{rule}; adapters in the store: {listed}"

    # -- writes --------------------------------------------------------------------------------
    def put(
        self,
        manifest_bytes: bytes,
        weights_bytes: bytes,
        *,
        backbone: VisionTransformer,
        activate: bool = False,
    ) -> PutResult:
        """Validate an upload, then store it as a new version of its name.

        Nothing changes on disk unless the whole upload is valid. The manifest's ``version`` is
        replaced by the store's; the weights are stored byte for byte.

        Raises:
            UploadTooLarge: a file is over the store's limits.
            IncompatibleBackbone: the manifest names another backbone fingerprint.
            InvalidCheckpoint: anything else is wrong (the message lists what).
        """
        ckpt = self._validate(manifest_bytes, weights_bytes, backbone)
        manifest = ckpt.manifest
        name = manifest.name
        with self._lock:
            name_dir = self.root / name
            existing = self._versions_in(name_dir)
            same = self._identical_version(name, existing, manifest)
            if same is not None:
                if activate:
                    write_file_atomic(name_dir / ACTIVE_FILE, f"{same}\n".encode("ascii"))
                stored = self.manifest(name, same)
                return PutResult(
                    name,
                    same,
                    False,
                    self.active(name) == same,
                    stored,
                    AdapterCheckpoint(stored, ckpt.tensors),
                )

            version = max([self._last(name_dir), *existing, 0]) + 1
            stored = manifest.model_copy(update={"version": version})
            name_dir.mkdir(exist_ok=True)
            write_dir_atomic(
                name_dir / str(version),
                {MANIFEST_FILE: _manifest_bytes(stored), WEIGHTS_FILE: weights_bytes},
            )
            write_file_atomic(name_dir / LAST_FILE, f"{version}\n".encode("ascii"))
            if activate or self.active(name) is None:
                write_file_atomic(name_dir / ACTIVE_FILE, f"{version}\n".encode("ascii"))
            return PutResult(
                name,
                version,
                True,
                self.active(name) == version,
                stored,
                AdapterCheckpoint(stored, ckpt.tensors),
            )

    def activate(self, name: str, version: int) -> None:
        """Make ``name@version`` the active version (rollback = activating an older one)."""
        with self._lock:
            self._version_dir(name, version)  # raises AdapterNotFound with what exists
            write_file_atomic(self.root / name / ACTIVE_FILE, f"{version}\n".encode("ascii"))

    def delete_version(self, name: str, version: int, *, force: bool = False) -> int | None:
        """Delete ``name@version``; returns the active version afterwards.

        The active version is deleted only with ``force``; the pointer then moves to the newest
        remaining version (or is removed with the last one). Deleting the only version deletes
        the name.

        Raises:
            AdapterNotFound: no such version (the message lists what exists).
            ActiveVersionConflict: ``version`` is active and ``force`` is False.
        """
        with self._lock:
            target = self._version_dir(name, version)
            name_dir = target.parent
            active = self.active(name)
            remaining = [v for v in self._versions_in(name_dir) if v != version]
            if version == active and not force:
                others = ", ".join(str(v) for v in remaining) or "none"
                raise ActiveVersionConflict(
                    f"{name}@{version} is the active version; activate another version first "
                    f"(others: {others}) or delete it with ?force=true"
                )
            if not remaining:
                _remove_tree_atomic(name_dir)
                return None
            if version == active:
                active = remaining[-1]
                write_file_atomic(name_dir / ACTIVE_FILE, f"{active}\n".encode("ascii"))
            _remove_tree_atomic(target)
            return active

    def delete(self, name: str) -> list[int]:
        """Delete ``name`` and every version of it; returns the versions deleted."""
        with self._lock:
            versions = self.versions(name)
            if not versions:
                raise AdapterNotFound(f"unknown adapter {name!r}: {self.describe(name)}")
            _remove_tree_atomic(self.root / name)
            return versions

    def cleanup(self) -> list[Path]:
        """Remove what a crash left behind: temp dirs/files and names without any version."""
        removed: list[Path] = []
        with self._lock:
            removed += remove_stale_temps(self.root)
            for name_dir in sorted(self.root.iterdir()):
                if not (name_dir.is_dir() and NAME_PATTERN.fullmatch(name_dir.name)):
                    continue
                removed += remove_stale_temps(name_dir)
                if not self._versions_in(name_dir):
                    shutil.rmtree(name_dir, ignore_errors=True)
                    removed.append(name_dir)
        return removed

    # -- helpers -------------------------------------------------------------------------------
    def _validate(
        self, manifest_bytes: bytes, weights_bytes: bytes, backbone: VisionTransformer
    ) -> AdapterCheckpoint:
        """The upload parsed and checked by lookaside.checkpoint; raises before any write."""
        for what, data, limit in (
            ("manifest", manifest_bytes, self.max_manifest_bytes),
            ("weights", weights_bytes, self.max_weights_bytes),
        ):
            if len(data) > limit:
                raise UploadTooLarge(
                    f"the {what} file is {len(data)} bytes, over this server's limit of {limit} "
                    "bytes; upload a smaller adapter or raise the limit in the settings"
                )
        if not weights_bytes:
            raise InvalidCheckpoint("the weights file is empty; upload adapter.safetensors")
        return validate_checkpoint_bytes(
            manifest_bytes, weights_bytes, backbone=backbone, limits=self.limits
        )

    def _identical_version(
        self, name: str, versions: list[int], manifest: AdapterManifest
    ) -> int | None:
        """The stored version whose content equals ``manifest``'s (apart from version/created)."""
        key = _identity(manifest)
        for version in versions:
            try:
                stored = self.manifest(name, version)
            except InvalidCheckpoint:
                continue
            if stored.weights_sha256 == manifest.weights_sha256 and _identity(stored) == key:
                return version
        return None

    def _version_dir(self, name: str, version: int) -> Path:
        if not NAME_PATTERN.fullmatch(name):
            raise AdapterNotFound(
                f"unknown adapter {name!r}: names are 1-64 lower-case letters, digits, '-' or "
                f"'_'; adapters in the store: {', '.join(self.names()) or 'none'}"
            )
        if version not in self.versions(name):
            raise AdapterNotFound(f"unknown adapter '{name}@{version}'; {self.describe(name)}")
        return self.root / name / str(version)

    @staticmethod
    def _versions_in(name_dir: Path) -> list[int]:
        try:
            entries = list(name_dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            int(p.name)
            for p in entries
            if p.name.isdigit() and not p.name.startswith("0") and (p / MANIFEST_FILE).is_file()
        )

    @staticmethod
    def _last(name_dir: Path) -> int:
        try:
            text = (name_dir / LAST_FILE).read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() else 0


def _identity(manifest: AdapterManifest) -> str:
    return json.dumps(
        manifest.model_dump(mode="json", exclude=set(_IGNORED_FOR_IDENTITY)), sort_keys=True
    )


def _manifest_bytes(manifest: AdapterManifest) -> bytes:
    """The manifest as :meth:`AdapterCheckpoint.save` writes it (sorted keys, no NaN)."""
    text = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _remove_tree_atomic(path: Path) -> None:
    """Rename ``path`` to a temp name (one atomic step readers see), then delete it."""
    aside = path.with_name(f".{path.name}.tmp-del_{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
