"""uvicorn's copy of a failed lifespan's traceback is dropped only when the failure is ours."""

from __future__ import annotations

import logging
import traceback

from service.errors import StartupFailed
from service.logging import OwnStartupFailureFilter


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, None)


def _traceback_of(exc: BaseException) -> str:
    try:
        raise exc
    except BaseException:
        return traceback.format_exc()


def test_our_startup_failure_traceback_is_dropped_any_other_is_kept() -> None:
    quiet = OwnStartupFailureFilter()
    ours = _traceback_of(StartupFailed("'/m/vit.safetensors' is not a safetensors file"))
    assert ours.startswith("Traceback")
    assert not quiet.filter(_record(ours))
    assert quiet.filter(_record(_traceback_of(RuntimeError("a bug"))))  # debuggable
    assert quiet.filter(_record("Application startup failed. Exiting."))
    assert quiet.filter(_record("Traceback-like words in an ordinary line: StartupFailed"))
