"""Fuzz every operation of the OpenAPI schema with schemathesis against the running app (uvicorn
on 127.0.0.1 in a thread, real HTTP): no generated request may get a 5xx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings

from lookaside.backbone import VisionTransformer
from service.app import create_app
from tests.integration.service.svc_support import ADMIN, make_checkpoint, put_in_store, settings


@pytest.fixture
def server(tmp_path: Path, svc_backbone: VisionTransformer) -> Iterator[str]:
    root = tmp_path / "store"
    put_in_store(root, make_checkpoint(svc_backbone, "esc50", method="lora", seed=1))
    app = create_app(
        settings(root, port=0, max_upload_bytes=200_000, max_media_bytes=200_000),
        backbone=svc_backbone,
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (srv.started and srv.servers):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/readyz").status_code == 200
    yield url
    srv.should_exit = True
    thread.join(30)


def test_no_generated_request_gets_a_5xx(server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures: list[str] = []
    seen: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/classify", "/healthz", "/readyz", "/metrics"}
    for op in operations:

        @given(case=op.as_strategy())
        @hyp_settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            # half of the mutating calls carry the token, so validation past auth is reached too
            headers = {"Authorization": f"Bearer {ADMIN}"} if hash(repr(case)) % 2 else {}
            response = case.call(base_url=server, headers=headers, timeout=60)
            seen.setdefault(f"{case.method} {case.operation.path}", set()).add(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"{response.text[:200]}"
                )

        run()
    assert failures == []
    assert len(seen) == len(operations)  # every operation was called
    assert seen["POST /classify"] & {413, 415, 422}  # the fuzzer reached input validation
