"""What travels between the ingress and the model replicas, and the settings each one rebuilds.

Errors travel as values (:class:`RemoteError`), not as pickled exceptions: the ingress re-raises
the same error class with the same message, so a client sees the answer one process would give
(status, ``error``, ``detail``, ``reason``), and no exception class needs to survive pickling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lookaside import errors as lookaside_errors
from lookaside.errors import LookasideError
from service import errors as service_errors
from service.errors import EngineFailure
from service.settings import ServiceSettings

MODEL_DEPLOYMENT = "LookasideModel"
INGRESS_DEPLOYMENT = "LookasideIngress"
APP_NAME = "lookaside"


@dataclass(frozen=True)
class RemoteError:
    """A project error raised on a replica, as data."""

    kind: str
    """The exception class name (``AdapterNotFound``, ``QueueFull``, ...)."""
    message: str
    reason: str | None = None

    @staticmethod
    def of(exc: LookasideError) -> RemoteError:
        return RemoteError(type(exc).__name__, str(exc), getattr(exc, "reason", None))

    def rebuild(self) -> LookasideError:
        """The same class with the same message (``EngineFailure`` for a class not known here)."""
        cls = getattr(service_errors, self.kind, None) or getattr(lookaside_errors, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, LookasideError)):
            return EngineFailure(f"{self.kind}: {self.message}")
        exc = cls.__new__(cls)
        Exception.__init__(exc, self.message)
        if self.reason is not None or issubclass(cls, service_errors.ServiceError):
            exc.reason = self.reason  # type: ignore[attr-defined]
        return exc


@dataclass(frozen=True)
class ReplicaAnswer:
    """One call's result, with what the ingress's metrics and ``/readyz`` learn of the replica."""

    replica: str
    """Ray Serve's replica id (stable for the replica's life; a restarted replica has a new one)."""
    logits: Tensor | None
    error: RemoteError | None = None
    loaded: bool = False
    """This call found its adapter not resident on this replica (a load, or waiting for one)."""
    queue_depth: int = 0
    resident: tuple[str, ...] = ()


def settings_payload(settings: ServiceSettings) -> dict[str, Any]:
    """``settings`` as plain data for the deployments' constructors: paths made absolute (a Ray
    worker's working directory is not the caller's), the admin token left out (the model replicas
    never need it; the ingress gets it on its own, :func:`ingress_settings`)."""
    data = settings.model_dump(mode="json", exclude={"admin_token"})
    for key in ("store", "ort_cache", "admin_token_file"):
        if settings_value := getattr(settings, key):
            data[key] = str(settings_value.resolve())
    data["ray"] = True
    return data


def replica_settings(payload: dict[str, Any]) -> ServiceSettings:
    """A model replica's settings: no admin routes (no token needed), and its registry keeps as
    many versions resident as its multiplexing cache holds."""
    data = dict(payload)
    data.update(
        ray=True,
        admin_token_file=None,  # not needed, and maybe not mounted on this node
        allow_no_admin_token=True,
        max_resident_adapters=payload.get("ray_adapters_per_replica", 16),
    )
    return ServiceSettings(**data)


def ingress_settings(payload: dict[str, Any], admin_token: str | None = None) -> ServiceSettings:
    """The ingress's settings: the admin token as given, else from ``admin_token_file`` or the
    ingress's environment."""
    extra = {"admin_token": admin_token} if admin_token else {}
    return ServiceSettings(**{**payload, **extra, "ray": True})
