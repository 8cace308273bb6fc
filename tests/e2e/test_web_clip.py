"""The Classify view's clip handling in a real headless Chromium (tests/e2e/browser_support.py):
the latest input wins (file, then a recording from Chromium's fake microphone; a dropped file),
example clips, the spectrogram with the per-window timeline, cleared results, the API snippet,
the dark scheme, and the AV tab's way forward. Scores are checked against the library's
reference (tests/integration/service/svc_support.py), not against the page's own code."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from service.app import create_app
from tests.e2e.browser_support import ARTIFACTS, FAKE_MEDIA, browser_session, drop_files
from tests.integration.service.svc_support import (
    LABELS,
    encode,
    expected_top,
    make_checkpoint,
    put_in_store,
    reference_scores,
    settings,
    tiny,
)
from tests.live_server import serve_in_thread
from training.cli import parser

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

FILE_S, EXAMPLE_S, DROP_S = 3.0, 2.0, 1.5
"""Durations that tell the clips apart in the server's answer (``duration_s``)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """uvicorn over a store with two audio adapters and an examples folder (one clip, plus
    files the listing must leave out)."""
    store = tmp_path_factory.mktemp("store")
    examples = tmp_path_factory.mktemp("examples")
    outside = tmp_path_factory.mktemp("outside")
    backbone = tiny()
    things: dict[str, Any] = {
        "backbone": backbone,
        "noises": make_checkpoint(backbone, "noises", method="lora", seed=2),
        "tones": make_checkpoint(backbone, "tones", method="loaa", seed=1),
        "example": encode(EXAMPLE_S, seed=4),
        "examples": examples,
    }
    put_in_store(store, things["noises"])
    put_in_store(store, things["tones"])
    (examples / "dog-bark.wav").write_bytes(things["example"])
    (examples / "notes.txt").write_text("not a clip")
    (examples / ".hidden.wav").write_bytes(things["example"])
    (outside / "secret.wav").write_bytes(things["example"])
    (examples / "escape.wav").symlink_to(outside / "secret.wav")
    app = create_app(settings(store, examples_dir=examples), backbone=backbone)
    with serve_in_thread(app) as url:
        yield url, things


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_session(*FAKE_MEDIA) as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: tuple[str, dict[str, Any]]) -> Iterator[Page]:
    """A fresh desktop-size page on the Classify view with only ``noises`` picked."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    p = context.new_page()
    p.goto(server[0])
    expect(p.get_by_label("noises")).to_be_checked()
    p.get_by_label("tones").uncheck()
    yield p
    context.close()


def top_of(things: dict[str, Any], clip: bytes) -> str:
    scores = reference_scores(things["backbone"], things["noises"], clip)
    return next(iter(expected_top(scores, LABELS, 1)))


def classify(page: Page, click: str = "Classify") -> dict[str, Any]:
    """Press a button that sends POST /classify; the server's answer (status 200 asserted)."""
    with page.expect_response(lambda r: r.url.endswith("/classify"), timeout=60_000) as info:
        page.get_by_role("button", name=click, exact=True).click()
    response = info.value
    assert response.status == 200, response.text()
    body: dict[str, Any] = response.json()
    return body


def test_examples_route_lists_only_clips_inside_the_folder(
    server: tuple[str, dict[str, Any]],
) -> None:
    url, things = server
    listed = httpx.get(f"{url}/examples").json()
    assert listed == [{"name": "dog-bark.wav", "url": "/examples/dog-bark.wav", "media": "audio"}]
    got = httpx.get(f"{url}/examples/dog-bark.wav")
    assert got.status_code == 200
    assert got.content == things["example"]
    assert got.headers["content-type"].startswith("audio/")
    for name in ("escape.wav", "notes.txt", ".hidden.wav", "..%2Foutside%2Fsecret.wav", "nope.wav"):
        assert httpx.get(f"{url}/examples/{name}").status_code == 404, name


def test_a_recording_after_a_file_is_what_classify_sends(
    page: Page, server: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(FILE_S, seed=3))
    page.get_by_label("Audio or video file").set_input_files(str(clip))
    expect(page.locator("#clip-status")).to_contain_text("file: clip.wav")
    page.get_by_role("button", name="Record from microphone").click()
    expect(page.get_by_role("button", name="Stop recording")).to_be_visible()
    page.wait_for_timeout(1200)
    page.get_by_role("button", name="Stop recording").click()
    expect(page.locator("#clip-status")).to_contain_text("Selected recording")
    body = classify(page)
    # The recording (about 1.2 s), not clip.wav (3 s).
    assert 0.5 < body["duration_s"] < FILE_S - 0.5, body["duration_s"]
    card = page.locator('article.result[data-adapter="noises"]')
    expect(card.locator(".meta")).to_contain_text(f"{body['duration_s']:.2f} s of audio")
    # The player plays what is selected.
    expect(page.locator("#player")).to_have_attribute("src", re.compile("^blob:"))
    # Classify pressed during a recording stops it and sends it.
    page.get_by_label("Audio or video file").set_input_files(str(clip))
    expect(page.locator("#clip-status")).to_contain_text("file: clip.wav")
    page.get_by_role("button", name="Record from microphone").click()
    expect(page.get_by_role("button", name="Stop recording")).to_be_visible()
    page.wait_for_timeout(800)
    body = classify(page)
    assert 0.3 < body["duration_s"] < FILE_S - 0.5, body["duration_s"]
    expect(page.get_by_role("button", name="Record from microphone")).to_be_visible()
    expect(page.locator("#clip-status")).to_contain_text("Selected recording")


def test_an_example_click_classifies_that_example(
    page: Page, server: tuple[str, dict[str, Any]]
) -> None:
    from playwright.sync_api import expect

    _, things = server
    expect(page.get_by_role("heading", name="Examples")).to_be_visible()
    expect(page.locator("#example-list button")).to_have_count(1)  # .txt, hidden, link: left out
    body = classify(page, click="try example dog-bark.wav")
    assert body["duration_s"] == pytest.approx(EXAMPLE_S, abs=0.01)
    expect(page.locator("#clip-status")).to_contain_text("Selected example: dog-bark.wav")
    card = page.locator('article.result[data-adapter="noises"]')
    expect(card.locator(".bars li .label").first).to_have_text(top_of(things, things["example"]))


def drop_file(page: Page, data: bytes, name: str, mime: str) -> None:
    drop_files(page, [(data, name, mime)])


def test_a_dropped_file_is_classified(page: Page, server: tuple[str, dict[str, Any]]) -> None:
    from playwright.sync_api import expect

    _, things = server
    clip = encode(DROP_S, seed=6)
    drop_file(page, clip, "dropped.wav", "audio/wav")
    expect(page.locator("#clip-status")).to_contain_text("Selected dropped file: dropped.wav")
    body = classify(page)
    assert body["duration_s"] == pytest.approx(DROP_S, abs=0.01)
    card = page.locator('article.result[data-adapter="noises"]')
    expect(card.locator(".bars li .label").first).to_have_text(top_of(things, clip))


def test_the_timeline_has_one_playable_window_per_window_of_the_answer(
    page: Page, server: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    _, things = server
    clip = encode(FILE_S, seed=3)
    (tmp_path / "long.wav").write_bytes(clip)
    page.get_by_label("Audio or video file").set_input_files(str(tmp_path / "long.wav"))
    expect(page.locator("#spectrogram-note")).to_contain_text("long.wav: 3.00 s")
    body = classify(page)
    timeline = body["results"][0]["timeline"]
    reference = reference_scores(things["backbone"], things["noises"], clip)
    assert len(timeline) == reference.shape[0] > 1
    windows = page.locator('.track[data-adapter="noises"] button.window')
    expect(windows).to_have_count(len(timeline))
    canvas = page.locator("#spectrogram").bounding_box()
    assert canvas is not None
    for i, w in enumerate(timeline):
        button = windows.nth(i)
        expect(button).to_have_attribute("data-label", LABELS[int(reference[i].argmax())])
        box = button.bounding_box()
        assert box is not None  # aligned under the spectrogram: x follows start_s
        want_x = canvas["x"] + canvas["width"] * w["start_s"] / FILE_S
        assert abs(box["x"] - want_x) < 3, (box, want_x)
    # A window plays its own span of the clip, then stops.
    last = timeline[-1]
    windows.nth(len(timeline) - 1).click()
    page.wait_for_function(
        f"(p => !p.paused && p.currentTime >= {last['start_s'] - 0.05})"
        "(document.querySelector('#player'))",
        timeout=10_000,
    )
    page.wait_for_function("document.querySelector('#player').paused", timeout=10_000)
    t = page.evaluate("document.querySelector('#player').currentTime")
    assert last["start_s"] <= t <= min(last["end_s"], FILE_S) + 0.3, (t, last)
    page.screenshot(path=str(ARTIFACTS / "web-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"), full_page=True)


def test_a_failing_request_clears_the_previous_results(
    page: Page, server: tuple[str, dict[str, Any]]
) -> None:
    from playwright.sync_api import expect

    drop_file(page, encode(DROP_S, seed=6), "good.wav", "audio/wav")
    classify(page)
    expect(page.locator("article.result")).to_have_count(1)
    drop_file(page, b"RIFF" + b"\x00" * 64, "broken.wav", "audio/wav")
    with page.expect_response(lambda r: r.url.endswith("/classify"), timeout=60_000) as info:
        page.get_by_role("button", name="Classify", exact=True).click()
    status = info.value.status
    assert status in (415, 422), status  # not audio the server can decode
    expect(page.locator("#classify-error")).to_be_visible()
    expect(page.locator("#classify-error")).to_contain_text(f"{status}: ")
    expect(page.locator("article.result")).to_have_count(0)
    expect(page.locator(".track")).to_have_count(0)


def test_the_api_snippet_is_the_current_request_and_runs(
    page: Page, server: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    url, things = server
    page.get_by_label("tones").check()
    page.get_by_label("Labels to show").fill("3")
    clip = encode(EXAMPLE_S, seed=4)
    drop_file(page, clip, "snippet.wav", "audio/wav")
    page.get_by_text("Use via API").click()
    curl = page.locator("#api-curl")
    expect(curl).to_contain_text(f"{url}/classify")
    expect(curl).to_contain_text("adapter=noises,tones")
    expect(curl).to_contain_text("top_k=3")
    python = page.locator("#api-python")
    expect(python).to_contain_text("from lookaside.client import Client")
    expect(python).to_contain_text(f'Client("{url}")')
    expect(python).to_contain_text('c.classify("snippet.wav", ["noises", "tones"], top_k=3)')
    expect(page.get_by_role("button", name="Copy curl command")).to_be_visible()
    expect(page.get_by_role("button", name="Copy Python code")).to_be_visible()
    # The shown command, run as shown, gets the answer the page shows.
    (tmp_path / "snippet.wav").write_bytes(clip)
    command = curl.inner_text().replace("\\\n", " ")
    shown = subprocess.run(
        shlex.split(command), cwd=tmp_path, capture_output=True, timeout=60, check=True
    )
    answer = json.loads(shown.stdout)
    assert [r["adapter"] for r in answer["results"]] == ["noises", "tones"]
    assert len(answer["results"][0]["labels"]) == 3
    assert answer["results"][0]["labels"][0]["label"] == top_of(things, clip)
    # So does the Python, with lookaside.client.
    done = subprocess.run(
        [sys.executable, "-c", python.inner_text()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["noises", "1"], ["tones", "1"]], done.stdout
    first = re.search(r"label='([^']*)'", lines[0])  # the labels' repr, best first
    assert first is not None
    assert first[1] == top_of(things, clip), lines[0]


def test_the_page_follows_a_dark_system_scheme(
    browser: Browser, server: tuple[str, dict[str, Any]]
) -> None:
    from playwright.sync_api import expect

    background = "getComputedStyle(document.body).backgroundColor"
    for scheme, want in (("dark", "rgb(20, 23, 28)"), ("light", "rgb(255, 255, 255)")):
        context = browser.new_context(
            viewport={"width": 1280, "height": 800},
            color_scheme=scheme,  # type: ignore[arg-type]
        )
        page = context.new_page()
        page.goto(server[0])
        expect(page.get_by_label("noises")).to_be_visible()
        assert page.evaluate(background) == want, scheme
        if scheme == "dark":
            classify(page, click="try example dog-bark.wav")
            expect(page.locator("article.result")).to_have_count(1)
            page.get_by_text("Use via API").click()
            page.screenshot(path=str(ARTIFACTS / "web-dark.png"), full_page=True)
        context.close()


def test_the_av_tab_without_an_av_adapter_shows_how_to_make_one(page: Page) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="AV events").click()
    howto = page.locator("#av-howto")
    expect(howto).to_be_visible()
    expect(howto).to_contain_text("No audio-visual adapter yet")
    commands = howto.locator("pre").inner_text().replace("\\\n", " ").splitlines()
    assert " ".join(commands[0].split()) == (
        "lookaside-train train --dataset ave --data-dir data/AVE --method avpea "
        "--backbone timm:vit_base_patch16_224.augreg_in21k --name ave"
    )
    assert commands[1].split()[:3] == ["lookaside-train", "push", "runs/ave/1"]
    for command in commands:  # both parse with the real CLI
        parser().parse_args(command.split()[1:])
    expect(howto).to_contain_text("RGB patch kernel")
    expect(page.get_by_role("button", name="Copy commands")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "web-av-howto.png"), full_page=True)


def test_progress_shows_the_upload_then_goes(page: Page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    clip = tmp_path / "big.wav"
    clip.write_bytes(encode(8.0, seed=7))  # 256 KB: about 2 s at the throttled 128 KB/s
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 128_000},
    )
    page.get_by_label("Audio or video file").set_input_files(str(clip))
    page.evaluate(
        """() => {
            window.seen = [];
            const box = document.querySelector('#classify-progress');
            new MutationObserver(() => { if (!box.hidden) window.seen.push(box.textContent); })
                .observe(box, { subtree: true, childList: true, characterData: true });
        }"""
    )
    progress = page.locator("#classify-progress")
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(progress).to_be_visible()
    expect(progress.locator("progress")).to_be_visible()
    expect(page.locator("article.result")).to_have_count(1, timeout=60_000)
    expect(progress).to_be_hidden()
    seen: list[str] = page.evaluate("window.seen")
    sending = [re.fullmatch(r"Sending big\.wav: (\d+) % ([\d.]+) s", s) for s in seen]
    percents = [int(m[1]) for m in sending if m]
    assert any(0 < p < 100 for p in percents), seen  # real upload progress, not a jump
    assert percents == sorted(percents), seen
    assert any(re.fullmatch(r"big\.wav sent; waiting for the answer… [\d.]+ s", s) for s in seen)
