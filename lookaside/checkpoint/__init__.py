"""Adapter checkpoints: a validated JSON manifest beside a safetensors file (docs/design.md §3).

One adapter on disk is a directory holding exactly two files:

- ``manifest.json``: an :class:`AdapterManifest` (name, version, task, method + config, labels,
  feature config, backbone id + fingerprint, metrics, parameter count, sha256 of the weights),
  written with sorted keys like PEFT's ``adapter_config.json``;
- ``adapter.safetensors``: the adapter's tensors (sites + ``head.*``) keyed without the runtime
  adapter id, so any name/version loads into any slot.

Modules:

- :mod:`~lookaside.checkpoint.manifest`: the schema;
- :mod:`~lookaside.checkpoint.validate`: the one bounded validation path for files and uploads,
  whose steps are :mod:`~lookaside.checkpoint.limits` (:class:`CheckpointLimits` and the
  manifest's check against them),
  :mod:`~lookaside.checkpoint.header` (the safetensors header) and
  :mod:`~lookaside.checkpoint.finite` (the finite scan; these two are shared with the bank);
- :mod:`~lookaside.checkpoint.compat`: the one backbone compatibility check;
- :mod:`~lookaside.checkpoint.atomic`: crash-safe writes, reused by the service's store;
- :mod:`~lookaside.checkpoint.adapter`: :class:`AdapterCheckpoint`, loading, saving.

Loading never unpickles and allocates nothing a checkpoint describes before it has been checked
against :class:`CheckpointLimits`, the file size, the checksum and the header. A checkpoint made
for another backbone is refused with :class:`IncompatibleBackbone`, also when it enters a bank.
Unknown manifest keys are ignored with a :class:`ManifestWarning`, so an older reader can still
load a checkpoint written by a newer one (PEFT's forward-compatible config parsing).
"""

from __future__ import annotations

from lookaside.checkpoint.adapter import (
    AdapterCheckpoint,
    ValidatedCheckpoint,
    load_checkpoint,
    validate_checkpoint_bytes,
)
from lookaside.checkpoint.finite import nonfinite_names
from lookaside.checkpoint.header import FLOAT_DTYPES, tensor_problems
from lookaside.checkpoint.limits import CheckpointLimits
from lookaside.checkpoint.manifest import (
    DEFAULT_MAX_BYTES,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    WEIGHTS_FILE,
    AdapterManifest,
    BackboneRef,
    ManifestWarning,
    load_manifest,
    parse_manifest,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FLOAT_DTYPES",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MAX_MANIFEST_BYTES",
    "WEIGHTS_FILE",
    "AdapterCheckpoint",
    "AdapterManifest",
    "BackboneRef",
    "CheckpointLimits",
    "ManifestWarning",
    "ValidatedCheckpoint",
    "load_checkpoint",
    "load_manifest",
    "nonfinite_names",
    "parse_manifest",
    "tensor_problems",
    "validate_checkpoint_bytes",
]
