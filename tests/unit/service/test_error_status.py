"""The one mapping of project errors to HTTP statuses, for the errors the limits raise."""

from __future__ import annotations

import pytest

from lookaside.errors import BadAudio, BadVideo, DeadlineExceeded, LookasideError
from service.errors import status_of


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (BadAudio("too_large", "over the decoded-sample budget"), 413),
        (BadAudio("too_long", "over the duration limit"), 413),
        (BadAudio("bad_rate", "1 Hz"), 422),
        (BadVideo("too_large", "8192 px"), 413),
        (DeadlineExceeded("decoding passed the deadline"), 504),
        (LookasideError("a bug"), 500),
    ],
)
def test_limit_errors_map_to_their_status(exc: LookasideError, status: int) -> None:
    assert status_of(exc) == status
