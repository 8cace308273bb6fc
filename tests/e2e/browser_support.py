"""What the browser tests share: the system Chromium (the server: tests/live_server.py).

Playwright's own browser download is not reachable here, so the tests launch Debian's chromium
through ``executable_path``. Outside CI a missing Chromium skips with the reason; in CI
(``CI=true``) it fails, because .ci/run installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("LOOKASIDE_ARTIFACTS", "build/test-artifacts"))
"""Where screenshots are saved (test artefacts)."""


def chromium() -> str:
    """Path of the system Chromium (skip outside CI, fail in CI when there is none)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "no Chromium found (apt-get install chromium); .ci/run installs it in CI"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
