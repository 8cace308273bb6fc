"""ServiceSettings: every knob of the server, typed, documented and validated at startup.

Read from ``LOOKASIDE_<FIELD>`` environment variables and a ``.env`` file (pydantic-settings);
built by :func:`service.__main__.main` or by the caller of :func:`service.app.create_app`, never at
import, so tests build several apps with different settings in one process. Every field carries an
attribute docstring: the README's settings table and ``--help`` are generated from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lookaside.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class ServiceSettings(BaseSettings):
    """Configuration of one Lookaside server process."""

    model_config = SettingsConfigDict(
        env_prefix="LOOKASIDE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    backbone: str = "random:test_vit"
    """Backbone weights, as ``lookaside.backbones.load_backbone`` reads them: ``timm:<name>``,
    ``hf:<repo>``, ``file:<path.safetensors>`` or ``random:<preset>[:seed]``. The default is a tiny
    random backbone so the server starts offline; adapters must match its fingerprint."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs: ``auto`` picks ``cuda`` when a GPU is visible, else ``cpu``."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute dtype of the forward (autocast); ``fp16`` needs CUDA. Weights stay fp32."""
    store: Path = Path("adapters_store")
    """Directory of the adapter store: ``<name>/<version>/{manifest.json, adapter.safetensors}``
    plus ``<name>/ACTIVE``. Created if missing."""
    host: str = "127.0.0.1"
    """Interface to listen on; use ``0.0.0.0`` inside a container."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 lets the OS pick one)."""
    max_batch_size: int = Field(16, ge=1, le=4096)
    """Most rows (windows x adapters) in one forward."""
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0)
    """How long the batcher waits for more rows after the first one of a batch arrived."""
    queue_capacity: int = Field(256, ge=1)
    """Most jobs (one clip x one adapter) queued; beyond it requests get 429 + Retry-After."""
    request_timeout_s: float = Field(30.0, gt=0.0)
    """A request not answered within this many seconds gets 504 (its queued rows are dropped)."""
    max_upload_bytes: int = Field(128 * 1024 * 1024, ge=1)
    """Largest adapter upload accepted (``POST /adapters``, admin only: a 10 % LoAA ViT-B adapter's
    weights are ~35 MB); beyond it: 413."""
    max_media_bytes: int = Field(32 * 1024 * 1024, ge=1)
    """Largest audio or video request body of ``/classify`` and ``/av-event`` (anyone may send
    these, so it is smaller than the adapter limit); beyond it: 413."""
    max_audio_seconds: float = Field(600.0, gt=0.0)
    """Longest audio clip accepted; beyond it: 413 (adapters may set a lower limit)."""
    max_video_seconds: float = Field(120.0, gt=0.0)
    """Longest video accepted by ``/av-event``; beyond it: 413."""
    max_video_side: int = Field(4096, gt=0)
    """Largest width or height of an uploaded video's frames (pixels); beyond it: 413."""
    max_video_frames: int = Field(20_000, gt=0)
    """Most frames decoded from one uploaded video; beyond it: 413."""
    max_resident_adapters: int = Field(64, ge=1)
    """Most adapter versions held on the device; the least recently used one is evicted and
    reloaded on demand."""
    pinned: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Adapter names that are never evicted (comma-separated in the environment)."""
    bank_capacity: int = Field(8, ge=1)
    """Slots per adapter stack when a stack is created; the engine grows a full stack between
    batches."""
    featurize_threads: int = Field(2, ge=1, le=64)
    """Threads decoding audio and computing features (off the event loop, before batching)."""
    admin_token: SecretStr = SecretStr("")
    """Bearer token of the mutating adapter routes. Required unless ``allow_no_admin_token``."""
    allow_no_admin_token: bool = False
    """Development only: start without an admin token (then mutating routes are open)."""
    log_format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per log line (for log shippers)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    mixing: Literal["on", "off"] = "on"
    """``on``: one forward mixes rows of different adapters. ``off``: one adapter per batch (what
    Ray Serve / TorchServe do), kept for benchmarking against."""
    warmup: bool = True
    """Run one warm-up batch per token grid in use before reporting ready."""
    retry_after_s: int = Field(1, ge=1)
    """``Retry-After`` seconds sent with 429 and 503 answers."""

    @field_validator("pinned", mode="before")
    @classmethod
    def _split_pinned(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _admin_token_required(self) -> ServiceSettings:
        if not self.admin_token.get_secret_value() and not self.allow_no_admin_token:
            raise ValueError(
                "admin_token is empty: set LOOKASIDE_ADMIN_TOKEN to a secret (e.g. "
                "`openssl rand -hex 32`), or set LOOKASIDE_ALLOW_NO_ADMIN_TOKEN=true for local "
                "development only"
            )
        if self.dtype == "fp16" and self.device == "cpu":
            raise ValueError(
                "dtype fp16 needs device cuda (or auto on a GPU host); use bf16 on cpu"
            )
        return self

    def torch_device(self) -> torch.device:
        """The device ``device`` names (``auto`` resolved now)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but no GPU is visible; use device=cpu or auto")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        """The compute dtype ``dtype`` names."""
        return DTYPES[self.dtype]

    @property
    def url(self) -> str:
        """Base URL clients use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"
