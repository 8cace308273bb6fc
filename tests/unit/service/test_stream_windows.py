"""A window failure is logged at ERROR once per session and kind (the rest are only counted), so
a failure that repeats on every window cannot flood the log."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lookaside.errors import LookasideError
from service.stream.tracks import Cut
from service.stream.windows import WindowContext, _log_failure


def _ctx(session: str) -> WindowContext:
    fake: Any = None
    return WindowContext(session, fake, fake, fake, fake, timeout_s=1.0, top_k=1)


def test_each_kind_of_failure_is_logged_once_per_session(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="service.stream")
    first, second = _ctx("s1"), _ctx("s2")
    for i in range(5):
        _log_failure(first, Cut(0, i, 0, 10, 16_000), LookasideError("load failed"))
        _log_failure(first, Cut(0, i, 0, 10, 16_000), RuntimeError("bug"))
    _log_failure(second, Cut(0, 0, 0, 10, 16_000), LookasideError("load failed"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.getMessage().split()[1], r.exc_info is not None) for r in errors] == [
        ("s1-0-0", False),
        ("s1-0-0", True),
        ("s2-0-0", False),
    ]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 8
