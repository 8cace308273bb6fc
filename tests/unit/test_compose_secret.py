"""docker-compose.yml hands the admin token over as a Docker secret (a file the settings read),
never as an environment variable (``docker inspect`` and ``/proc/<pid>/environ`` show those)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_the_admin_token_is_a_required_docker_secret(compose: dict[str, Any]) -> None:
    svc = compose["services"]["lookaside"]
    env = svc["environment"]
    assert "LOOKASIDE_ADMIN_TOKEN" not in env
    (name,) = svc["secrets"]
    assert env["LOOKASIDE_ADMIN_TOKEN_FILE"] == f"/run/secrets/{name}"
    source = compose["secrets"][name]["file"]
    # compose refuses to start without it, and says what to do
    assert source.startswith("${LOOKASIDE_ADMIN_TOKEN_FILE:?")
    assert source.endswith("}")
    assert source.count("}") == 1  # the message itself cannot close the interpolation early


def test_settings_read_the_token_from_the_mounted_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compose: dict[str, Any]
) -> None:
    """What the container does at start: only LOOKASIDE_ADMIN_TOKEN_FILE is set."""
    secret = tmp_path / "lookaside_admin_token"
    secret.write_text("0123abcd\n")  # `openssl rand -hex 32 > file` ends with a newline
    for key in [k for k in compose["services"]["lookaside"]["environment"] if k.startswith("L")]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN_FILE", str(secret))
    s = ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.admin_token.get_secret_value() == "0123abcd"
