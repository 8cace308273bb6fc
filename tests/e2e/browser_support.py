"""What the browser tests share: the system Chromium (the server: tests/live_server.py).

Playwright's own browser download is not reachable here, so the tests launch Debian's chromium
through ``executable_path``. Outside CI a missing Chromium skips with the reason; in CI
(``CI=true``) it fails, because .ci/run installs it.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ARTIFACTS = Path(os.environ.get("LOOKASIDE_ARTIFACTS", "build/test-artifacts"))
"""Where screenshots are saved (test artefacts)."""

FAKE_MEDIA = (
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",  # a synthetic microphone (a beep)
    "--autoplay-policy=no-user-gesture-required",
)
"""Chromium switches for the recording and playback tests."""


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


@contextmanager
def browser_session(*args: str) -> Iterator[Browser]:
    """One headless Chromium (shared by a test module: starting one costs about a second)."""
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", *args])
        try:
            yield browser
        finally:
            browser.close()


def drop_files(page: Page, files: list[tuple[bytes, str, str]]) -> None:
    """Drop ``(data, name, mime)`` files on the page as a user's drag would: a DataTransfer
    built in the page, dragenter / dragover / drop dispatched on the body."""
    page.evaluate(
        """(files) => {
            const dt = new DataTransfer();
            for (const [b64, name, mime] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], name, { type: mime }));
            }
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.body.dispatchEvent(
                    new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
            }
        }""",
        [[base64.b64encode(data).decode(), name, mime] for data, name, mime in files],
    )
