"""The Adapters view's mutating actions in a real headless Chromium: each asks before it acts
(dismissing changes nothing on the server), then says it succeeded; a refused upload shows the
server's reason in the error style. The server's own listing is the reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from service.app import create_app
from tests.e2e.browser_support import ARTIFACTS, browser_session, drop_files
from tests.integration.service.svc_support import (
    ADMIN,
    checkpoint_bytes,
    make_checkpoint,
    put_in_store,
    settings,
    tiny,
)
from tests.live_server import serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """uvicorn over a fresh store (each test changes it): ``tones`` v1 and v2 (v2 active),
    ``spare`` v1."""
    backbone = tiny()
    put_in_store(tmp_path, make_checkpoint(backbone, "tones", method="loaa", seed=1))
    put_in_store(tmp_path, make_checkpoint(backbone, "tones", method="loaa", seed=5, version=2))
    put_in_store(tmp_path, make_checkpoint(backbone, "spare", method="lora", seed=2))
    app = create_app(settings(tmp_path, warmup=False), backbone=backbone)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_session() as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """The Adapters view with the admin token entered."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    p = context.new_page()
    p.goto(server)
    p.get_by_role("tab", name="Adapters").click()
    expect(p.locator("#adapters-list table")).to_be_visible(timeout=30_000)
    p.get_by_label("Admin token").fill(ADMIN)
    yield p
    context.close()


def versions(url: str, name: str) -> tuple[list[int], int | None]:
    got = httpx.get(f"{url}/adapters/{name}")
    if got.status_code == 404:
        return [], None
    body: dict[str, Any] = got.json()
    return [v["version"] for v in body["versions"]], body["active"]


def names(url: str) -> list[str]:
    return [a["name"] for a in httpx.get(f"{url}/adapters").json()["adapters"]]


def answer_next_dialog(page: Page, accept: bool, seen: list[str]) -> None:
    def handle(dialog: Any) -> None:
        seen.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", handle)


def test_deleting_a_version_asks_first(page: Page, server: str) -> None:
    from playwright.sync_api import expect

    seen: list[str] = []
    answer_next_dialog(page, False, seen)
    page.get_by_role("button", name="delete version 1 of tones").click()
    expect(page.locator("#adapters-list")).to_contain_text("tones")
    assert seen == ["Delete version 1 of tones? This cannot be undone."]
    assert versions(server, "tones") == ([1, 2], 2)  # dismissed: nothing deleted

    answer_next_dialog(page, True, seen)
    page.get_by_role("button", name="delete version 1 of tones").click()
    expect(page.locator("#adapters-status")).to_have_text("Deleted version 1 of tones.")
    assert versions(server, "tones") == ([2], 2)
    expect(page.get_by_role("button", name="delete version 1 of tones")).to_have_count(0)

    # The active version: the dialog says the consequence; the other one takes over.
    active_only = page.get_by_role("button", name="delete version 2 of tones")
    answer_next_dialog(page, True, seen)
    active_only.click()
    expect(page.locator("#adapters-status")).to_have_text("Deleted version 2 of tones.")
    assert "It is the only version" in seen[-1]
    assert "tones" not in names(server)


def test_deleting_an_adapter_asks_first(page: Page, server: str) -> None:
    from playwright.sync_api import expect

    seen: list[str] = []
    answer_next_dialog(page, False, seen)
    page.get_by_role("button", name="delete adapter spare").click()
    expect(page.get_by_role("button", name="delete adapter spare")).to_be_visible()
    assert len(seen) == 1
    assert "Delete the adapter spare and all its 1 version(s)?" in seen[0]
    assert "spare" in names(server)

    answer_next_dialog(page, True, seen)
    page.get_by_role("button", name="delete adapter spare").click()
    expect(page.locator("#adapters-status")).to_have_text("Deleted spare (1 version(s)).")
    assert names(server) == ["tones"]
    expect(page.get_by_role("button", name="delete adapter spare")).to_have_count(0)
    expect(page.get_by_label("spare")).to_have_count(0)  # gone from the Classify picker too


def test_rollback_asks_first_and_says_it_happened(page: Page, server: str) -> None:
    from playwright.sync_api import expect

    seen: list[str] = []
    rollback = page.get_by_role("button", name="roll back to version 1 of tones")
    answer_next_dialog(page, False, seen)
    rollback.click()
    expect(rollback).to_be_enabled()
    assert seen == [
        "Roll back tones from version 2 to version 1? New requests get version 1 at once."
    ]
    assert versions(server, "tones")[1] == 2

    answer_next_dialog(page, True, seen)
    rollback.click()
    expect(page.locator("#adapters-status")).to_have_text("Rolled back tones to version 1 (was 2).")
    assert versions(server, "tones")[1] == 1
    # Forward again: no question for a newer version, and it says so.
    page.get_by_role("button", name="activate version 2 of tones").click()
    expect(page.locator("#adapters-status")).to_have_text("Activated tones version 2.")
    assert versions(server, "tones")[1] == 2
    assert len(seen) == 2
    page.screenshot(path=str(ARTIFACTS / "web-adapters.png"), full_page=True)


def test_a_refused_upload_shows_the_reason_as_an_error(
    page: Page, server: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    (tmp_path / "manifest.json").write_text("{not json")
    (tmp_path / "adapter.safetensors").write_bytes(b"\x00" * 16)
    page.get_by_label("manifest.json").set_input_files(str(tmp_path / "manifest.json"))
    page.get_by_label("adapter.safetensors").set_input_files(str(tmp_path / "adapter.safetensors"))
    page.get_by_role("button", name="Upload").click()
    error = page.locator("#upload-error")
    expect(error).to_be_visible()
    expect(error).to_have_class("error")
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_contain_text("Upload refused: 422: ")
    expect(page.locator("#upload-status")).to_have_text("")
    expect(page.locator("#upload-progress")).to_be_hidden()
    # Without the token the server's 401 reason is shown the same way.
    page.get_by_label("Admin token").fill("")
    page.get_by_role("button", name="Upload").click()
    expect(error).to_contain_text("Upload refused: 401: ")


def test_dropping_a_checkpoint_on_the_adapters_view_uploads_it(page: Page, server: str) -> None:
    from playwright.sync_api import expect

    manifest, weights = checkpoint_bytes(make_checkpoint(tiny(), "dropped", method="lora", seed=3))
    name_w = "adapter.safetensors"
    drop_files(
        page,
        [
            (manifest, "manifest.json", "application/json"),
            (weights, "adapter.safetensors", "application/octet-stream"),
        ],
    )
    for label, name in (("manifest.json", "manifest.json"), ("adapter.safetensors", name_w)):
        assert page.get_by_label(label).evaluate("i => i.files[0].name") == name
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-status")).to_have_text("Stored dropped v1, active.")
    assert versions(server, "dropped") == ([1], 1)
