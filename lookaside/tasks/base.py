"""What a task kind is: the contract between a request's rows, the batcher and the model.

A *task kind* says what one row of a request is (a spectrogram window; a window of one-second
audio-visual segments), which rows may share a forward (the same :meth:`TaskKind.grid`), what a
row costs (:meth:`TaskKind.tokens_per_row`), and which forward of
:class:`~lookaside.model.MultiAdapterModel` serves it. An adapter method declares the kinds it
serves (:attr:`lookaside.adapters.base.AdapterMethod.tasks`); the engine, the routes, the upload
checks and training ask the kind instead of branching on the method.

Inputs are a tuple of tensors whose first dimension is the row: the batcher slices and
concatenates them position by position, so a kind never sees how rows were batched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from lookaside.adapters import get_method
from lookaside.errors import ConfigError

if TYPE_CHECKING:
    from lookaside.adapters.base import AdapterConfig
    from lookaside.backbone_config import BackboneConfig
    from lookaside.features import FeatureConfig
    from lookaside.model import MultiAdapterModel

Inputs = tuple[Tensor, ...]
"""One job's (or one batch's) input tensors; dimension 0 of each is the row."""


class TaskKind(ABC):
    """One kind of task the server and training know (see the module docstring)."""

    name: str
    """Registry key (``clip``, ``av_events``); what :attr:`AdapterMethod.tasks` lists."""
    summary: str
    """One line for docs and errors."""
    yields: bool = False
    """True for kinds with long forwards: right after a batch of this kind, the oldest job of
    another kind goes first, so rows of other kinds never wait behind more than one of them."""

    def rows(self, inputs: Inputs) -> int:
        """Rows of ``inputs`` (dimension 0)."""
        return int(inputs[0].shape[0])

    def take(self, inputs: Inputs, start: int, stop: int) -> Inputs:
        """Rows ``[start, stop)`` of every input."""
        return tuple(t[start:stop] for t in inputs)

    @abstractmethod
    def check_inputs(self, inputs: Inputs) -> None:
        """Raise :class:`ConfigError` unless ``inputs`` have this kind's shapes and >= 1 row."""

    @abstractmethod
    def grid(self, inputs: Inputs) -> tuple[int, ...]:
        """The shape every row of one forward must share."""

    @abstractmethod
    def tokens_per_row(self, cfg: BackboneConfig, inputs: Inputs) -> int:
        """Patch tokens one row of ``inputs`` costs a forward on a backbone of config ``cfg``."""

    @abstractmethod
    def window_tokens(
        self, cfg: BackboneConfig, features: FeatureConfig, config: AdapterConfig
    ) -> int:
        """Patch tokens of one window of an adapter with these feature and method configs (the
        upload limit counts with this, so a stored adapter always fits the per-forward budget)."""

    def window_label(self, config: AdapterConfig) -> str:
        """Words naming what one window holds, put before its grid in limit messages (``""``
        for a spectrogram window; the audio-visual kind: ``"10 segments of "``)."""
        return ""

    @abstractmethod
    def forward(
        self, model: MultiAdapterModel, inputs: Inputs, adapter_ids: Sequence[str | None]
    ) -> list[Tensor | None]:
        """Per-row logits of a mixed batch (None for rows routed to no adapter)."""

    @abstractmethod
    def logits(self, model: MultiAdapterModel, inputs: Inputs, adapter_id: str) -> Tensor:
        """Logits of one adapter for every row (training and evaluation)."""

    @abstractmethod
    def warmup_inputs(self, cfg: BackboneConfig, frames: int, mel: int) -> Inputs:
        """One zero row of a window of ``frames x mel`` (the server warms each grid in use)."""

    @abstractmethod
    def wrong_kind(self, adapter_id: str, method: str) -> str:
        """The message refusing an adapter of ``method`` (which does not serve this kind) for a
        call of this kind: what the adapter serves instead and where to send it."""

    def serves(self, method: str) -> bool:
        """Whether adapters of ``method`` serve this kind."""
        return self.name in get_method(method).tasks

    def check_method(self, adapter_id: str, method: str) -> None:
        """Refuse (:class:`ConfigError`) an adapter whose method does not serve this kind."""
        if not self.serves(method):
            raise ConfigError(self.wrong_kind(adapter_id, method))
