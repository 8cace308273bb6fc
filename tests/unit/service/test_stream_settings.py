"""The ``stream_*`` settings' own checks: sessions must leave connections for the rest of the
API (WebSocket upgrades bypass uvicorn's ``limit_concurrency``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.integration.service.svc_support import settings


def test_stream_max_sessions_must_be_under_max_connections(tmp_path: Path) -> None:
    ok = settings(tmp_path, stream_max_sessions=63, max_connections=64)
    assert ok.stream_max_sessions == 63
    with pytest.raises(ValidationError, match="stream_max_sessions .* max_connections"):
        settings(tmp_path, stream_max_sessions=64, max_connections=64)


def test_the_new_stream_bounds_have_their_defaults(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert (s.stream_open_timeout_s, s.stream_max_sample_rate) == (5.0, 48_000)
    assert s.stream_max_unsent_bytes == 4 * 1024 * 1024


def test_an_unset_stream_max_sessions_is_lowered_under_a_small_max_connections(
    tmp_path: Path,
) -> None:
    assert settings(tmp_path, max_connections=7).stream_max_sessions == 6
    assert settings(tmp_path).stream_max_sessions == 64
