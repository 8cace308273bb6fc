"""``/docs`` in a real headless Chromium with every request to anything but the server blocked:
Swagger UI renders the operations, "Authorize" takes the admin token and "Try it out" sends it;
ReDoc renders too. Screenshots: ``build/test-artifacts/docs.png`` and ``redoc.png``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from service.app import create_app
from tests.e2e.browser_support import ARTIFACTS, browser_session
from tests.integration.service.svc_support import (
    ADMIN,
    make_checkpoint,
    put_in_store,
    settings,
    tiny,
)
from tests.live_server import serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("store")
    backbone = tiny()
    put_in_store(store, make_checkpoint(backbone, "tones", method="lora", seed=1))
    app = create_app(settings(store), backbone=backbone)
    with serve_in_thread(app) as served:
        yield served


def _offline(page: Page) -> list[str]:
    """Abort every request not to 127.0.0.1; returns the list the aborted URLs go to."""
    blocked: list[str] = []

    def handle(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", handle)
    return blocked


def _execute_delete(page: Page, name: str) -> str:
    """Try ``DELETE /adapters/{name}/versions/{version}`` with version 9; the status shown."""
    op = page.locator(".opblock-delete", has_text="/adapters/{name}/versions/{version}")
    if not op.locator(".opblock-body").is_visible():
        op.locator(".opblock-summary").first.click()
    toggle = op.locator("button.try-out__btn")
    toggle.wait_for(timeout=30_000)
    if "Try it out" in toggle.inner_text():
        toggle.click()
    op.locator('tr[data-param-name="name"] input').fill(name)
    op.locator('tr[data-param-name="version"] input').fill("9")
    op.get_by_role("button", name="Execute").click()
    status = op.locator(".live-responses-table .response .response-col_status").first
    status.wait_for(timeout=30_000)
    text = status.inner_text().strip()
    op.get_by_role("button", name="Clear").click()
    return text


def test_swagger_ui_renders_offline_and_authorize_sends_the_token(url: str) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_session() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        blocked = _offline(page)
        page.goto(f"{url}/docs")
        expect(page.locator(".opblock-summary-path", has_text="/classify")).to_be_visible(
            timeout=30_000
        )
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert {"/classify", "/info", "/adapters", "/adapters/{name}/activate"} <= {
            p.replace("\u200b", "").strip() for p in paths
        }
        page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=False)
        # without the token the server refuses; after Authorize the request reaches the route
        assert _execute_delete(page, "tones").startswith("401")
        page.locator("button.authorize").first.click()
        page.locator(".modal-ux input").first.fill(ADMIN)
        page.locator(".modal-ux button.modal-btn.authorize").click()
        expect(page.locator(".modal-ux")).to_contain_text("Logout")  # Swagger UI: authorized
        page.locator(".modal-ux button.btn-done").click()
        assert _execute_delete(page, "tones").startswith("404")  # no version 9 of tones

        page.goto(f"{url}/redoc")
        expect(page.get_by_text("Classify a clip with one or more adapters").first).to_be_attached(
            timeout=30_000
        )
        page.screenshot(path=str(ARTIFACTS / "redoc.png"), full_page=False)
        page.close()
    assert blocked == []
