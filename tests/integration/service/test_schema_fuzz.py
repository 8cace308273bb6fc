"""Schemathesis, as an outside user runs it (its CLI, every phase, its DEFAULT checks: status codes,
content types, response schemas, headers, positive/negative data, auth, methods and ``Allow``),
over the whole OpenAPI document of a real server (uvicorn on 127.0.0.1 in a thread, the product's
config), once without and once with the admin token.

The only tuning is what a schema cannot express (``schemathesis.toml`` below): a body can be
schema-valid bytes and still not be audio, a video or a checkpoint (415/422/413), and a
``cursor`` is valid only if this server gave it (422). Examples are bounded so a run takes
seconds on two cores.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lookaside.backbone import VisionTransformer
from service.app import create_app
from tests.integration.service.svc_support import ADMIN, make_checkpoint, put_in_store, settings
from tests.live_server import serve_in_thread

MAX_EXAMPLES = 15
"""Per operation and phase: ~500 requests per run, ~10 s here."""
_UNEXPRESSIBLE_BODY = '["2xx", "401", "403", "404", "409", "413", "415", "422", "429"]'
CONFIG = f"""
# A body the schema calls valid (any bytes) that is not audio / video / a checkpoint.
[[operations]]
include-name = "POST /classify"
checks.positive_data_acceptance.expected-statuses = {_UNEXPRESSIBLE_BODY}
# an adapter that exists, so the fuzzer's bytes reach the decoder
parameters = {{ "query.adapter" = "esc50" }}

[[operations]]
include-name = "POST /av-event"
checks.positive_data_acceptance.expected-statuses = {_UNEXPRESSIBLE_BODY}

[[operations]]
include-name = "POST /adapters"
checks.positive_data_acceptance.expected-statuses = {_UNEXPRESSIBLE_BODY}

# `cursor` is opaque: only the `next_cursor` this server returned is valid.
[[operations]]
include-name = "GET /adapters"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


@pytest.fixture
def server(tmp_path: Path, svc_backbone: VisionTransformer) -> Iterator[str]:
    root = tmp_path / "store"
    put_in_store(root, make_checkpoint(svc_backbone, "esc50", method="lora", seed=1))
    app = create_app(
        settings(root, port=0, max_upload_bytes=200_000, max_media_bytes=200_000),
        backbone=svc_backbone,
    )
    with serve_in_thread(app) as url:
        yield url


def _statuses(url: str, route: str) -> set[str]:
    """HTTP statuses the server answered on ``route`` (from its own metrics)."""
    text = httpx.get(f"{url}/metrics").text
    return {
        sample.labels["status"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if family.name == "lookaside_requests" and sample.labels.get("route") == route
    }


@pytest.mark.parametrize("token", [False, True], ids=["anonymous", "admin"])
def test_schemathesis_default_checks_pass(server: str, tmp_path: Path, token: bool) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    operations = sum(
        len([m for m in item if m in ("get", "post", "put", "delete", "patch")])
        for item in httpx.get(f"{server}/openapi.json").json()["paths"].values()
    )
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{server}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--seed",
        "14",
        "--no-color",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    if token:
        command += ["--header", f"Authorization: Bearer {ADMIN}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert f"Selected: {operations}/{operations}" in run.stdout, run.stdout[-3000:]
    assert f"Tested: {operations}" in run.stdout, run.stdout[-3000:]
    # the fuzzer got past the framing to the decoder, and (with the token) past auth
    assert _statuses(server, "/classify") & {"413", "415", "422"}
    admin = _statuses(server, "/adapters/{name}/versions/{version}")  # DELETE only
    assert "401" in admin
    assert bool(admin - {"401", "403", "405"}) == token, admin  # past auth only with it
