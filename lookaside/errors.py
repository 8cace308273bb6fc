"""One exception hierarchy for the whole project.

The service maps these to 4xx answers in one place; training and the CLI print them. Each message
names what is wrong and, where there is one, the fix or the valid choices.
"""

from __future__ import annotations


class LookasideError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(LookasideError, ValueError):
    """A configuration (backbone, adapter, features, training) is invalid."""


class BadAudio(LookasideError, ValueError):
    """Uploaded or loaded audio cannot be used.

    Attributes:
        reason: a short machine-readable code: ``empty``, ``truncated``, ``not_audio``,
            ``too_long``, ``too_short``, ``bad_values``, ``unsupported``, ``bad_rate`` (a sample
            rate outside 1 kHz..384 kHz), or ``too_large`` (more decoded samples than the budget
            allows: channels x rate x seconds).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExceeded(LookasideError):
    """Work on a request's input ran past the request's deadline and was abandoned (a caller
    running it in a pool cannot cancel it otherwise: the decoder checks the deadline itself)."""


class WeightLoadError(LookasideError):
    """Backbone weights could not be found, read or converted."""


class InvalidCheckpoint(LookasideError, ValueError):
    """An adapter checkpoint is malformed: schema, tensors, checksum or values."""


class IncompatibleBackbone(InvalidCheckpoint):
    """An adapter checkpoint was made for another backbone than the one loaded."""


class AdapterNotFound(LookasideError, KeyError):
    """A request names an adapter (or version) that is not loaded."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class BankFull(LookasideError):
    """A stack of the adapter bank has no free slot; the message says how to raise its capacity.

    Capacity never grows implicitly (a growth re-allocates every slot under whatever batch is
    running): build the bank with ``AdapterBank(capacity=...)``, call ``bank.grow(...)`` between
    batches, or remove an adapter.
    """


class BadVideo(LookasideError, ValueError):
    """An uploaded or loaded video cannot be used.

    Attributes:
        reason: a short machine-readable code: ``empty``, ``not_video``, ``truncated``,
            ``no_video_track``, ``no_audio_track``, ``no_frames``, ``unsupported``, or one of
            :attr:`LIMIT_REASONS` (``too_long``, ``too_large``, ``too_many_frames``: over a
            configured limit, answered 413 by the service; the others 422).
    """

    LIMIT_REASONS = frozenset({"too_long", "too_large", "too_many_frames"})
    """Reasons that mean the video exceeds a limit rather than being unusable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def over_limit(self) -> bool:
        """True when the video is refused for its size (duration, resolution, frame count)."""
        return self.reason in self.LIMIT_REASONS
