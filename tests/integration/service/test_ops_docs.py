"""``/docs`` and ``/redoc`` work with no network: every script, stylesheet and icon they name is
on this server (and answers with its type); the OpenAPI document declares the admin token as a
bearer scheme on exactly the routes that refuse a request without it."""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from service.routes.docs import POLICY
from tests.integration.service.svc_support import ADMIN, serve, settings

TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _Assets(HTMLParser):
    """The URLs of a page's ``<script src>`` and ``<link href>``."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        url = named.get("src") if tag == "script" else named.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)


def test_docs_pages_name_only_assets_this_server_serves(tmp_path: Path) -> None:
    async def run() -> dict[str, tuple[int, str, str]]:
        got: dict[str, tuple[int, str, str]] = {}
        policies: list[str] = []
        async with serve(settings(tmp_path / "store")) as (_, client):
            for page in ("/docs", "/redoc"):
                answer = await client.get(page)
                got[page] = (answer.status_code, answer.headers["content-type"], answer.text)
                policies.append(answer.headers["content-security-policy"])
                parser = _Assets()
                parser.feed(answer.text)
                for url in parser.urls:
                    asset = await client.get(url)
                    got[url] = (asset.status_code, asset.headers["content-type"], "")
        # images, fonts and fetches from this server only (ReDoc's CDN logo never requested)
        assert policies == [POLICY, POLICY]
        assert "img-src 'self' data:" in POLICY
        assert "connect-src 'self'" in POLICY
        return got

    got = asyncio.run(run())
    for page in ("/docs", "/redoc"):
        status, content_type, html = got[page]
        assert status == 200
        assert content_type.startswith("text/html")
        assert re.search(r"https?://|//[a-z]", html, re.IGNORECASE) is None, html
        assert "/openapi.json" in html
    assets = [url for url in got if url not in ("/docs", "/redoc")]
    assert {Path(url).name for url in assets} >= {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "redoc.standalone.js",
    }
    for url in assets:
        status, content_type, _ = got[url]
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        assert status == 200, url
        assert content_type.startswith(TYPES[Path(url).suffix]), (url, content_type)


def test_openapi_bearer_scheme_is_on_exactly_the_routes_that_need_the_token(
    tmp_path: Path,
) -> None:
    """Every operation is asked without a token: those answering 401 are the ones the document
    marks with the bearer scheme (and the 401 / 403 answers are the server's own)."""

    async def run() -> tuple[dict[str, Any], dict[tuple[str, str], int], dict[str, Any]]:
        statuses: dict[tuple[str, str], int] = {}
        async with serve(settings(tmp_path / "store")) as (_, client):
            doc = (await client.get("/openapi.json")).json()
            for path, item in doc["paths"].items():
                url = re.sub(r"\{[^}]+\}", "1", path)
                for method in item:
                    answer = await client.request(method.upper(), url)
                    statuses[(method, path)] = answer.status_code
            missing = await client.post("/adapters/x/activate", json={"version": 1})
            wrong = await client.post(
                "/adapters/x/activate", json={"version": 1}, headers={"Authorization": "Bearer no"}
            )
            right = await client.post(
                "/adapters/x/activate",
                json={"version": 1},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
        return doc, statuses, {"missing": missing, "wrong": wrong, "right": right}

    doc, statuses, answers = asyncio.run(run())
    schemes = doc["components"]["securitySchemes"]
    [(name, scheme)] = schemes.items()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    marked = {
        (method, path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if {name: []} in op.get("security", [])
    }
    refused = {key for key, status in statuses.items() if status == 401}
    assert marked == refused
    assert ("post", "/adapters") in marked
    assert ("post", "/adapters/{name}/activate") in marked
    assert ("delete", "/adapters/{name}") in marked
    assert not {("post", "/classify"), ("get", "/adapters"), ("get", "/info")} & marked
    assert answers["missing"].status_code == 401
    assert answers["missing"].headers["www-authenticate"] == "Bearer"
    assert answers["missing"].json()["detail"] == (
        "this route needs the admin token: send 'Authorization: Bearer <token>'"
    )
    assert answers["wrong"].status_code == 403
    assert answers["wrong"].json()["detail"] == "wrong admin token"
    assert answers["right"].status_code == 404  # past the token: no adapter named x
