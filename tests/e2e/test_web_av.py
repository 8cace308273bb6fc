"""The web page's "AV events" tab in a real headless browser (Debian's chromium via Playwright):
pick an AV adapter, upload a video, see it in the player with the per-second strip and the events
under it; labels equal the library's reference. Screenshot: ``build/test-artifacts/av.png``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from tests.e2e.browser_support import ARTIFACTS, browser_session, chromium, drop_files
from tests.integration.service.av_support import (
    AV_BACKBONE,
    AV_LABELS,
    av_checkpoint,
    clip_bytes,
    expected_events,
    reference_av,
    tiny_av,
)
from tests.integration.service.svc_support import make_checkpoint, put_in_store, settings
from tests.live_server import serve_in_thread


@pytest.fixture(scope="module")
def av_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """uvicorn on 127.0.0.1 over a store with an AV adapter and an audio adapter."""
    store = tmp_path_factory.mktemp("store")
    backbone = tiny_av()
    put_in_store(store, av_checkpoint(backbone, "scene", seed=0))
    put_in_store(store, make_checkpoint(backbone, "snd", method="lora", seed=2))
    app = create_app(settings(store, backbone=AV_BACKBONE), backbone=backbone)
    with serve_in_thread(app) as url:
        yield url, backbone


def test_av_tab_shows_the_video_the_strip_and_the_events(
    av_server: tuple[str, object], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, backbone = av_server
    video = clip_bytes(webm=True)
    path = tmp_path / "clip.webm"
    path.write_bytes(video)
    probs = reference_av(backbone, av_checkpoint(backbone, "scene", seed=0), video)  # type: ignore[arg-type]
    want_labels = [AV_LABELS[int(i)] for i in probs.argmax(1)]
    want_events = expected_events(probs)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            # The Classify tab offers audio adapters only.
            expect(page.get_by_label("snd")).to_be_visible()
            expect(page.get_by_label("scene")).to_have_count(0)
            # Keyboard: the tabs follow the WAI-ARIA pattern (arrow keys move between them).
            page.get_by_role("tab", name="Classify").focus()
            page.keyboard.press("ArrowRight")
            expect(page.get_by_role("tab", name="AV events")).to_be_focused()
            expect(page.get_by_role("tab", name="AV events")).to_have_attribute(
                "aria-selected", "true"
            )
            select = page.get_by_label("Adapter", exact=True)
            expect(select.locator("option")).to_have_count(1)  # AV adapters only
            expect(select).to_have_value("scene")
            page.get_by_role("button", name="Find events").click()
            expect(page.locator("#av-error")).to_contain_text("Choose a video file")
            page.get_by_label("Video file (with its sound track)").set_input_files(str(path))
            page.get_by_role("button", name="Find events").click()

            card = page.locator('#av-results article.result[data-adapter="scene"]')
            expect(card).to_be_visible(timeout=60_000)
            expect(card.locator(".meta")).to_contain_text("version 1")
            expect(card.locator("video.av-player")).to_be_visible()
            strip = card.locator("ol.strip button")
            expect(strip).to_have_count(len(want_labels))
            for t, label in enumerate(want_labels):
                expect(strip.nth(t)).to_have_attribute("data-t", str(t))
                aria = strip.nth(t).get_attribute("aria-label") or ""
                assert aria.startswith(f"second {t}: {label},"), (aria, want_labels)
            events = card.locator("ol.events li")
            expect(events).to_have_count(len(want_events))
            for i, (start, end, label, _) in enumerate(want_events):
                expect(events.nth(i)).to_contain_text(f"{label} {start}–{end} s")
            # A second of the strip moves the player there (keyboard: focus + Enter).
            last = len(want_labels) - 1
            strip.nth(last).focus()
            page.keyboard.press("Enter")
            page.wait_for_function(
                f"Math.floor(document.querySelector('video.av-player').currentTime) === {last}"
            )
            page.screenshot(path=str(ARTIFACTS / "av.png"), full_page=True)
        finally:
            browser.close()


def test_a_video_dropped_on_the_av_tab_is_sent(av_server: tuple[str, object]) -> None:
    from playwright.sync_api import expect

    url, _ = av_server
    with browser_session() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.get_by_role("tab", name="AV events").click()
        expect(page.get_by_label("Adapter", exact=True)).to_have_value("scene")
        expect(page.locator("#av-howto")).to_be_hidden()  # an AV adapter exists: no how-to
        drop_files(page, [(clip_bytes(webm=True), "dropped.webm", "video/webm")])
        video = page.get_by_label("Video file (with its sound track)")
        assert video.evaluate("i => i.files[0].name") == "dropped.webm"
        with page.expect_response(lambda r: r.url.endswith("/av-event"), timeout=60_000) as info:
            page.get_by_role("button", name="Find events").click()
        assert info.value.status == 200
        card = page.locator('#av-results article.result[data-adapter="scene"]')
        expect(card.locator("ol.strip button")).to_have_count(len(info.value.json()["seconds"]))
        expect(page.locator("#clip-status")).to_have_text("No clip selected yet.")  # not Classify's
