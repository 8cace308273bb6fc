"""The page's Live view in a real headless Chromium (tests/e2e/browser_support.py) with Chromium's
fake microphone, against a real uvicorn server's ``GET /stream``: the microphone is asked for
only on Start, windows arrive with the adapter's labels and scores (checked against the library's
reference on the very samples the page sent, cut offline with lookaside/stream_protocol.py's
arithmetic), the lag is shown, Stop shows the server's final counts and releases the microphone
and the audio graph; a server refusal and a refused microphone are shown in words."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import connect

from lookaside.stream_protocol import CloseCode, window_span, window_start
from service.app import create_app
from tests.e2e.browser_support import ARTIFACTS, FAKE_MEDIA, browser_session
from tests.integration.service.svc_support import (
    make_checkpoint,
    put_in_store,
    reference_scores,
    settings,
    tiny,
)
from tests.live_server import serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, WebSocket

WORDS = ["yes", "no", "up", "down", "stop", "go"]
"""The adapter's labels (none of them a label of the page's other tests)."""
HOP_S = 0.5
"""Asked for in the page: windows (1.3 s, the default FEATURES) every half second."""

# Counts the page's microphone requests and keeps what it opened, so the test can see that
# nothing is asked for before Start and that everything is released after Stop.
SPY = """
window.__gum = 0;
window.__streams = [];
window.__contexts = [];
const realGum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (c) => {
  window.__gum += 1;
  if (window.__refuse) throw new DOMException("Permission denied", "NotAllowedError");
  const s = await realGum(c);
  window.__streams.push(s);
  return s;
};
const RealContext = window.AudioContext;
window.AudioContext = class extends RealContext {
  constructor(...a) { super(...a); window.__contexts.push(this); }
};
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """uvicorn over one audio adapter; one live session at most (the refusal test fills it)."""
    store = tmp_path_factory.mktemp("store")
    backbone = tiny()
    ckpt = make_checkpoint(backbone, "words", method="lora", labels=WORDS, seed=3)
    put_in_store(store, ckpt)
    app = create_app(settings(store, stream_max_sessions=1), backbone=backbone)
    with serve_in_thread(app) as url:
        yield url, {"backbone": backbone, "words": ckpt}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_session(*FAKE_MEDIA) as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: tuple[str, dict[str, Any]]) -> Iterator[Page]:
    """A fresh page on the Live view, ``words`` picked."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(SPY)
    p = context.new_page()
    p.goto(server[0])
    p.get_by_role("tab", name="Live").click()
    expect(p.locator("#live-choices").get_by_label("words")).to_be_checked()
    yield p
    context.close()


class Sent:
    """What the page sent over /stream: the opening message and the audio, as sent."""

    def __init__(self) -> None:
        self.texts: list[dict[str, Any]] = []
        self.audio = bytearray()

    def watch(self, ws: WebSocket) -> None:
        if ws.url.endswith("/stream"):
            ws.on("framesent", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            self.audio += payload
        else:
            self.texts.append(json.loads(payload))


def shown_scores(row: Any) -> dict[str, float]:
    labels = row.locator(".bars li .label").all_inner_texts()
    scores = row.locator(".bars li .score").all_inner_texts()
    return {k: float(v) for k, v in zip(labels, scores, strict=True)}


def test_live_windows_arrive_with_the_adapters_labels_and_stop_releases_everything(
    page: Page, server: tuple[str, dict[str, Any]]
) -> None:
    from playwright.sync_api import expect

    _, things = server
    sent = Sent()
    page.on("websocket", sent.watch)
    assert page.evaluate("window.__gum") == 0  # the Live view alone does not ask
    page.get_by_label("Hop, seconds").fill(str(HOP_S))
    page.get_by_role("button", name="Start listening").click()
    expect(page.locator("#live-tracks")).to_contain_text(
        re.compile(rf"words@1 · window \d\.\d\d s · hop {HOP_S:.2f} s")
    )
    rows = page.locator("#live-timeline li.live-window:not(.dropped)")
    expect(rows.nth(1)).to_be_visible(timeout=20_000)
    assert page.evaluate("window.__gum") == 1
    for stat in ("#live-lag-server", "#live-lag-client"):
        expect(page.locator(stat)).to_have_text(re.compile(r"^-?\d+\.\d\d s$"))
    # The latest label (a live region) is the newest window's top label.
    page.wait_for_function(
        """() => document.querySelector('#live-latest').textContent === 'words: ' +
            document.querySelector('#live-timeline li.live-window:not(.dropped)').dataset.label""",
        timeout=5_000,
    )
    page.get_by_role("button", name="Stop listening").click()
    status = page.locator("#live-status")
    expect(status).to_have_text(
        re.compile(r"^Stopped: \d+ windows, \d+ dropped, [\d.]+ s of audio\.$")
    )
    got = re.match(r"Stopped: (\d+) windows, (\d+) dropped", status.inner_text())
    assert got is not None
    expect(rows).to_have_count(int(got[1]))
    expect(page.locator("#live-timeline li.dropped")).to_have_count(int(got[2]))
    expect(page.locator("#live-windows")).to_have_text(got[1])
    expect(page.get_by_role("button", name="Start listening")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop listening")).to_be_disabled()
    # Nothing keeps running: the microphone's tracks ended, the audio context closed.
    page.wait_for_function("window.__contexts.every((c) => c.state === 'closed')", timeout=5_000)
    assert page.evaluate(
        "window.__streams.flatMap((s) => s.getTracks()).every((t) => t.readyState === 'ended')"
    )
    assert page.evaluate("window.__contexts.length") == 1
    page.screenshot(path=str(ARTIFACTS / "web-live.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "web-live-phone.png"), full_page=True)

    # The page's opening message, and its labels and scores are the library's on the very
    # samples it sent (each window cut offline as the protocol says).
    opening = sent.texts[0]
    assert {
        k: opening[k] for k in ("adapters", "format", "channels", "top_k", "hop_s", "follow")
    } == {
        "adapters": ["words"],
        "format": "f32",
        "channels": 1,
        "top_k": 3,
        "hop_s": HOP_S,
        "follow": False,  # pinned unless the box is ticked
    }
    assert sent.texts[-1] == {"type": "end"}
    rate = int(opening["sample_rate"])
    audio = np.frombuffer(bytes(sent.audio), dtype="<f4")
    span = window_span(things["words"].manifest.features.target_frames, rate)
    hop_frames = round(HOP_S * 100)
    every = page.locator("#live-timeline li.live-window")
    shown_all = sorted(int(i) for i in every.evaluate_all("rs => rs.map((r) => r.dataset.index)"))
    assert shown_all == list(range(len(shown_all))), shown_all  # each window once (or dropped)
    full = [k for k in shown_all if window_start(k, hop_frames, rate) + span <= audio.size]
    assert len(full) >= 2, (shown_all, audio.size, span)
    assert shown_all[len(full) :] in ([], [len(full)]), shown_all  # at most a shorter tail after
    indices = [int(i) for i in rows.evaluate_all("rs => rs.map((r) => r.dataset.index)")]
    for k in indices:
        start = window_start(k, hop_frames, rate)
        buf = io.BytesIO()
        sf.write(buf, audio[start : start + span], rate, format="WAV", subtype="FLOAT")
        want = reference_scores(things["backbone"], things["words"], buf.getvalue())[0]
        shown = shown_scores(page.locator(f'#live-timeline li.live-window[data-index="{k}"]'))
        assert len(shown) == 3, shown
        assert set(shown) <= set(WORDS), shown
        assert next(iter(shown)) == WORDS[int(want.argmax())], (k, shown, want)
        for label, score in shown.items():
            assert score == pytest.approx(float(want[WORDS.index(label)]), abs=2e-3), (k, label)


def test_a_server_refusal_is_shown_with_its_close_code(
    page: Page, server: tuple[str, dict[str, Any]]
) -> None:
    from playwright.sync_api import expect

    url, _ = server
    # One session (stream_max_sessions=1) holds the server; the page's is refused.
    with connect(url.replace("http", "ws", 1) + "/stream", open_timeout=10) as held:
        held.send(json.dumps({"adapters": ["words"], "sample_rate": 16_000}))
        assert json.loads(held.recv(timeout=10))["type"] == "ready"
        page.get_by_role("button", name="Start listening").click()
        error = page.locator("#live-error")
        expect(error).to_be_visible(timeout=10_000)
        expect(error).to_contain_text("The server refused the stream:")
        expect(error).to_contain_text(f"(close code {int(CloseCode.TOO_MANY_SESSIONS)}, ")
        page.screenshot(path=str(ARTIFACTS / "web-live-refused.png"), full_page=True)
        held.send(json.dumps({"type": "end"}))
    expect(page.get_by_role("button", name="Start listening")).to_be_enabled()
    page.wait_for_function("window.__contexts.every((c) => c.state === 'closed')", timeout=5_000)
    assert page.evaluate(
        "window.__streams.flatMap((s) => s.getTracks()).every((t) => t.readyState === 'ended')"
    )


def test_a_refused_microphone_is_said_and_nothing_is_sent(page: Page) -> None:
    from playwright.sync_api import expect

    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    page.evaluate("window.__refuse = true")
    page.get_by_role("button", name="Start listening").click()
    error = page.locator("#live-error")
    expect(error).to_contain_text("Microphone permission refused")
    expect(page.get_by_role("button", name="Start listening")).to_be_enabled()
    assert page.evaluate("window.__gum") == 1
    assert opened == []


def test_a_hop_outside_the_bounds_is_refused_before_the_microphone(page: Page) -> None:
    from playwright.sync_api import expect

    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    page.locator("#live-hop").fill("-1")
    page.get_by_role("button", name="Start listening").click()
    expect(page.locator("#live-error")).to_contain_text("The hop must be a number of seconds")
    assert page.evaluate("window.__gum") == 0
    assert opened == []


def test_follow_the_active_version_is_asked_for_when_ticked(page: Page) -> None:
    from playwright.sync_api import expect

    sent = Sent()
    page.on("websocket", sent.watch)
    page.get_by_label("Follow the active version").check()
    page.get_by_role("button", name="Start listening").click()
    expect(page.locator("#live-tracks")).to_contain_text("words@1")
    page.get_by_role("button", name="Stop listening").click()
    expect(page.locator("#live-status")).to_contain_text("Stopped:")
    assert sent.texts[0]["follow"] is True
