"""ServiceSettings: environment and .env parsing, documentation, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from service.settings import ServiceSettings


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LOOKASIDE_"):
            monkeypatch.delenv(key)


def test_environment_with_prefix_and_comma_separated_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("LOOKASIDE_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("LOOKASIDE_PINNED", "esc50, speech@2")
    monkeypatch.setenv("LOOKASIDE_MIXING", "off")
    monkeypatch.setenv("LOOKASIDE_DEVICE", "cpu")
    s = ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.max_batch_size == 32
    assert s.pinned == ["esc50", "speech@2"]
    assert s.mixing == "off"
    assert s.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # the token never shows in logs
    assert s.torch_device() == torch.device("cpu")


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch)
    env = tmp_path / ".env"
    env.write_text("LOOKASIDE_ADMIN_TOKEN=abc\nLOOKASIDE_PORT=9123\nLOOKASIDE_DTYPE=bf16\n")
    s = ServiceSettings(_env_file=env)  # type: ignore[call-arg]
    assert (s.port, s.dtype, s.torch_dtype()) == (9123, "bf16", torch.bfloat16)
    assert s.url == "http://127.0.0.1:9123"


def test_defaults_share_the_backbone_and_listen_on_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's default backbone is the one lookaside-train defaults to (issue 18: adapters
    trained with defaults must load on a server started with defaults)."""
    from lookaside.backbones import DEFAULT_BACKBONE

    _clean_env(monkeypatch)
    s = ServiceSettings(_env_file=None, allow_no_admin_token=True)  # type: ignore[call-arg]
    assert s.backbone == DEFAULT_BACKBONE == "timm:vit_base_patch16_224.augreg_in21k"
    assert s.host == "127.0.0.1"
    assert s.log_format == "text"


def test_empty_admin_token_is_refused_unless_dev_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    with pytest.raises(ValidationError, match="LOOKASIDE_ADMIN_TOKEN"):
        ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    ServiceSettings(_env_file=None, allow_no_admin_token=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("device", "tpu", "device"),
        ("dtype", "fp8", "dtype"),
        ("log_format", "xml", "log_format"),
        ("mixing", "maybe", "mixing"),
        ("max_batch_size", 0, "max_batch_size"),
        ("queue_capacity", 0, "queue_capacity"),
        ("port", 70000, "port"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        ServiceSettings(_env_file=None, admin_token="x", **{field: value})  # type: ignore[call-arg]


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ValidationError, match="bf16"):
        ServiceSettings(_env_file=None, admin_token="x", device="cpu", dtype="fp16")  # type: ignore[call-arg]


def test_every_field_is_documented() -> None:
    for name, field in ServiceSettings.model_fields.items():
        assert len(field.description or "") > 15, name


def test_console_script_refuses_invalid_settings_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.__main__ import main

    _clean_env(monkeypatch)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    assert main(["--port", "8123"]) == 2
    assert "LOOKASIDE_ADMIN_TOKEN" in capsys.readouterr().err


def test_console_script_refuses_the_admin_token_as_a_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every local user can read a process's arguments: the token must come from a file or the
    environment, and the refusal says which."""
    from service.__main__ import main

    _clean_env(monkeypatch)
    monkeypatch.chdir(Path(__file__).parent)
    assert main(["--admin-token", "s3cret", "--port", "8123"]) == 2
    err = capsys.readouterr().err
    assert "--admin-token is refused" in err
    assert "LOOKASIDE_ADMIN_TOKEN_FILE" in err
    assert "ps" in err


def test_admin_token_file_is_read_and_exclusive(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_env(monkeypatch)
    token = tmp_path / "admin_token"
    token.write_text("  from-a-file\n")
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN_FILE", str(token))
    s = ServiceSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.admin_token.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(s)
    with pytest.raises(ValidationError, match="not both"):
        ServiceSettings(_env_file=None, admin_token="x")  # type: ignore[call-arg]
    token.write_text("\n")
    with pytest.raises(ValidationError, match="empty"):
        ServiceSettings(_env_file=None)  # type: ignore[call-arg]


def test_uvicorn_config_carries_every_connection_limit() -> None:
    """The product's uvicorn config (the tests' live servers use the same builder)."""
    from service.__main__ import MAX_HEADER_BYTES, uvicorn_config
    from service.http_limits import HeaderTimeoutH11

    s = ServiceSettings(
        _env_file=None,  # type: ignore[call-arg]
        admin_token="x",
        header_timeout_s=0.5,
        keep_alive_timeout_s=0.25,
        max_connections=7,
        retry_after_s=3,
    )
    config = uvicorn_config(object(), s, port=0)  # type: ignore[arg-type]
    assert isinstance(config.http, type)
    assert issubclass(config.http, HeaderTimeoutH11)
    assert (config.http.header_timeout_s, config.http.keep_alive_timeout_s) == (0.5, 0.25)
    assert config.http.retry_after_s == 3
    assert config.limit_concurrency == 7
    assert config.h11_max_incomplete_event_size == MAX_HEADER_BYTES
    assert (config.host, config.port, config.lifespan) == ("127.0.0.1", 0, "on")
