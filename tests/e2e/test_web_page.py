"""The web page in a real headless browser: Debian's chromium driven by Playwright (see
tests/e2e/browser_support.py). Screenshots are saved under ``build/test-artifacts/`` (or
``$LOOKASIDE_ARTIFACTS``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from tests.e2e.browser_support import ARTIFACTS, chromium
from tests.integration.service.svc_support import (
    ADMIN,
    LABELS,
    checkpoint_bytes,
    encode,
    expected_top,
    make_checkpoint,
    put_in_store,
    reference_scores,
    settings,
    tiny,
)
from tests.live_server import serve_in_thread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, object]]]:
    """A real uvicorn server on 127.0.0.1 over a store with two adapters of different methods."""
    store = tmp_path_factory.mktemp("store")
    backbone = tiny()
    ckpts = {
        "tones": make_checkpoint(backbone, "tones", method="loaa", seed=1),
        "noises": make_checkpoint(backbone, "noises", method="lora", seed=2),
    }
    for ckpt in ckpts.values():
        put_in_store(store, ckpt)
    app = create_app(settings(store), backbone=backbone)
    with serve_in_thread(app) as url:
        yield url, {"backbone": backbone, **ckpts}


def test_page_classifies_a_clip_and_lists_adapters(
    server: tuple[str, dict[str, object]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, things = server
    clip = encode(1.0, rate=22_050, seed=3)
    clip_path = tmp_path / "clip.wav"
    clip_path.write_bytes(clip)
    want = expected_top(
        reference_scores(things["backbone"], things["noises"], clip),  # type: ignore[arg-type]
        LABELS,
        1,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            expect(page.get_by_role("heading", name="Lookaside")).to_be_visible()
            # Pick "noises" only (the first adapter is pre-checked: uncheck it).
            page.get_by_label("tones").uncheck()
            page.get_by_label("noises").check()
            page.get_by_label("Audio or video file").set_input_files(str(clip_path))
            page.get_by_role("button", name="Classify").click()
            card = page.locator('article.result[data-adapter="noises"]')
            expect(card).to_be_visible(timeout=60_000)
            expect(card.locator(".meta")).to_contain_text("version 1")
            top_label = card.locator(".bars li .label").first.inner_text()
            assert top_label == next(iter(want)), (top_label, want)
            page.screenshot(path=str(ARTIFACTS / "classify.png"), full_page=True)

            # Both adapters at once: one result card each, in one request.
            page.get_by_label("tones").check()
            page.get_by_role("button", name="Classify").click()
            expect(page.locator("article.result")).to_have_count(2, timeout=60_000)

            # The adapters view: names, methods, versions; activation needs the token.
            page.get_by_role("tab", name="Adapters").click()
            table = page.locator("#adapters-list table")
            expect(table).to_be_visible(timeout=30_000)
            expect(table).to_contain_text("tones")
            expect(table).to_contain_text("loaa")
            expect(table).to_contain_text("lora")
            expect(page.get_by_role("button", name="version 1 of tones is active")).to_be_disabled()
            page.get_by_label("Admin token").fill(ADMIN)

            # Upload a second version of "tones" through the form (activated at once), then roll
            # back to version 1 with its button.
            manifest, weights = checkpoint_bytes(
                make_checkpoint(things["backbone"], "tones", method="loaa", seed=5)  # type: ignore[arg-type]
            )
            (tmp_path / "manifest.json").write_bytes(manifest)
            (tmp_path / "adapter.safetensors").write_bytes(weights)
            page.get_by_label("manifest.json").set_input_files(str(tmp_path / "manifest.json"))
            page.get_by_label("adapter.safetensors").set_input_files(
                str(tmp_path / "adapter.safetensors")
            )
            page.get_by_role("button", name="Upload").click()
            expect(page.locator("#upload-status")).to_contain_text("Stored tones v2")
            expect(page.get_by_role("button", name="version 2 of tones is active")).to_be_disabled()
            # Rolling back asks first, then says so.
            page.once("dialog", lambda dialog: dialog.accept())
            page.get_by_role("button", name="roll back to version 1 of tones").click()
            expect(page.get_by_role("button", name="version 1 of tones is active")).to_be_disabled()
            expect(page.locator("#adapters-status")).to_have_text(
                "Rolled back tones to version 1 (was 2)."
            )
            assert httpx.get(f"{url}/adapters/tones").json()["active"] == 1
            page.screenshot(path=str(ARTIFACTS / "adapters.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(url)
            expect(phone.get_by_label("noises")).to_be_visible()
            phone.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
        finally:
            browser.close()
