"""The Dockerfile and docker-compose.yml hold the essentials (no Docker engine here: parsed)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions((ROOT / "docker" / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _env(dockerfile: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_runs_the_console_script_as_non_root_on_cuda(
    dockerfile: list[tuple[str, str]],
) -> None:
    froms = [rest for word, rest in dockerfile if word == "FROM"]
    assert froms
    assert all("nvidia/cuda" in f and "runtime" in f for f in froms)  # final stage: CUDA runtime
    users = [rest for word, rest in dockerfile if word == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    entry = [rest for word, rest in dockerfile if word in ("ENTRYPOINT", "CMD")][-1]
    assert json.loads(entry)[0] == "lookaside-serve"
    env = _env(dockerfile)
    assert env["LOOKASIDE_HOST"] == "0.0.0.0"  # reachable from outside the container
    volumes = [v for word, rest in dockerfile if word == "VOLUME" for v in json.loads(rest)]
    assert env["LOOKASIDE_STORE"] in volumes
    (health,) = [rest for word, rest in dockerfile if word == "HEALTHCHECK"]
    assert "/healthz" in health
    assert f":{env['LOOKASIDE_PORT']}/healthz" in health
    assert not any(word == "COPY" and "adapters_store" in rest for word, rest in dockerfile)


def test_compose_reserves_a_gpu_mounts_the_store_and_is_scraped(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    services = compose["services"]
    svc = services["lookaside"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    store = svc["environment"]["LOOKASIDE_STORE"]
    assert store == _env(dockerfile)["LOOKASIDE_STORE"]
    assert f"adapters_store:{store}" in svc["volumes"]
    assert "adapters_store" in compose["volumes"]
    # the admin token is a required Docker secret (a file), never an environment value
    assert "LOOKASIDE_ADMIN_TOKEN" not in svc["environment"]
    assert svc["environment"]["LOOKASIDE_ADMIN_TOKEN_FILE"].startswith("/run/secrets/")
    secret = compose["secrets"][svc["secrets"][0]]
    assert secret["file"].startswith("${LOOKASIDE_ADMIN_TOKEN_FILE:?")
    assert any("/healthz" in part for part in svc["healthcheck"]["test"])

    prom = services["prometheus"]
    mounts = [v.split(":") for v in prom["volumes"]]
    config_host = next(src for src, dst, *_ in mounts if dst == "/etc/prometheus/prometheus.yml")
    scrape = yaml.safe_load((ROOT / config_host).read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "lookaside"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    port = _env(dockerfile)["LOOKASIDE_PORT"]
    assert f"lookaside:{port}" in targets
