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
from lookaside.token_file import read_token_file

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

    backbone: str = "timm:vit_base_patch16_224.augreg_in21k"  # backbones.DEFAULT_BACKBONE
    """Backbone weights: ``timm:<name>``, ``hf:<repo>``, ``file:<path.safetensors>`` or
    ``random:<preset>[:seed]``. The default is the one ``lookaside-train`` uses too (downloaded
    once, then cached; offline use a ``file:`` copy); ``random:test_vit`` is a tiny random one
    that needs no download. Adapters load only on the backbone they were trained on."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs: ``auto`` picks ``cuda`` when a GPU is visible, else ``cpu``."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute dtype of the forward (autocast); ``fp16`` needs CUDA. Weights stay fp32."""
    engine: Literal["torch", "onnxruntime"] = "torch"
    """Runtime of the backbone pass: ``torch`` (eager PyTorch) or ``onnxruntime`` (the backbone
    and its adapter sites as an ONNX graph whose adapters are inputs; heads stay in PyTorch).
    Batching, leases, swaps and every route work the same on both."""
    ort_precision: Literal["fp32", "int8", "fp16"] = "fp32"
    """ONNX Runtime precision: ``fp32``; ``int8`` (CPU: the frozen backbone's weights quantised,
    adapters stay fp32); ``fp16`` (CUDA)."""
    ort_cache: Path = Path(".lookaside-cache/onnx")
    """Directory of exported ONNX graphs (and TensorRT engines), reused across restarts; a graph
    is rebuilt only for a new set of adapter stack signatures, a new backbone or new versions."""
    ort_tensorrt: bool = False
    """On CUDA, put TensorRT's execution provider in front of CUDA's (engines cached in
    ``ort_cache/tensorrt``)."""
    store: Path = Path("adapters_store")
    """Directory of the adapter store: ``<name>/<version>/{manifest.json, adapter.safetensors}``
    plus ``<name>/ACTIVE``. Created if missing."""
    examples_dir: Path | None = None
    """Folder of example clips (audio or video files) the web page offers to try with one click
    (``GET /examples``); unset, the page offers none. ``make demo`` writes a few generated ones."""
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
    max_decoded_samples: int = Field(2**24, ge=16_000)
    """Most audio samples (channels x frames, at the file's own rate) decoded for one request, a
    clip or a video's sound: checked from the header before decoding and counted while decoding
    in chunks (downmixed as they come), so a lying header cannot exceed it; beyond it: 413. The
    default (16.8 M) keeps one request's audio well under 100 MB: 17 min of 16 kHz mono, 87 s of
    48 kHz stereo, 11 s of 8 channels at 192 kHz."""
    max_request_rows: int = Field(1024, ge=1)
    """Most windows one request sends to the engine, summed over the adapters it names (a 600 s
    clip is 120 five-second windows per adapter); beyond it: 413 before any feature is
    computed."""
    max_request_feature_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    """Most bytes of features (float32 windows) one ``/classify`` request may hold, over the
    distinct feature settings of the adapters it names (a 600 s clip in 5.12 s windows of 128
    mel bins is 30 MiB); beyond it: 413 before any feature is computed."""
    max_batch_tokens: int = Field(8192, ge=64)
    """Most tokens (rows x tokens per row) in one forward: the batcher never exceeds it, a job
    larger than it is split, and an adapter whose one window needs more is refused at upload."""
    engine_stall_s: float = Field(120.0, gt=0.0)
    """A forward or adapter load running longer than this marks the engine stalled: ``/readyz``
    answers 503 with the reason and queued requests fail fast with 503 + Retry-After. A full
    ``max_batch_tokens`` forward of ViT-B takes 10-55 s on a loaded 2-core CPU, milliseconds on a
    GPU: lower it on a GPU host."""
    engine_dead_s: float = Field(600.0, gt=0.0)
    """``/healthz`` (liveness) answers 503 once the engine has been stalled this long, so an
    orchestrator restarts the process."""
    header_timeout_s: float = Field(10.0, gt=0.0)
    """A client must send a request's complete headers within this many seconds of connecting
    (or of the previous response on a kept-alive connection); else the connection is closed."""
    body_timeout_s: float = Field(120.0, gt=0.0)
    """Longest time to receive one request body; a slower body gets 408 and the connection is
    closed (a 32 MiB clip at 4 Mbit/s takes 67 s)."""
    keep_alive_timeout_s: float = Field(5.0, gt=0.0)
    """An idle kept-alive connection is closed after this many seconds."""
    max_connections: int = Field(512, ge=1)
    """Most concurrent connections and requests; beyond it new requests get 503 (uvicorn's
    ``limit_concurrency``)."""
    max_inflight_body_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    """Budget of request-body bytes being received or held at once, over all requests; a request
    that would pass it gets 503 + Retry-After before its body is read."""
    metrics_max_adapters: int = Field(1000, ge=1)
    """Adapter names with their own series in the per-adapter metrics; later names are counted
    under ``adapter="_other"``, so a store of thousands of names cannot grow ``/metrics``
    without bound."""
    metrics_max_age_s: float = Field(1.0, ge=0.0, le=60.0)
    """``GET /metrics`` reuses one rendering for this long (0: render every scrape), so a
    client scraping without pause costs one render a second, not half the process."""
    device_cache_bytes: int | None = Field(None, ge=0)
    """Bytes of adapter weights held on the device (bank slots and heads); past it the policy's
    idle victim is evicted and reloaded on demand. Unset: derived at startup (CUDA: half the
    free device memory; CPU: 25 % of available memory, at most 8 GiB) and logged."""
    host_cache_bytes: int | None = Field(None, ge=0)
    """Bytes of validated, packed adapters kept in host memory (pinned on CUDA), so a reload
    reads no disk and validates nothing again; 0 turns the tier off. Unset: derived at startup
    (CPU: 12.5 % of available memory, at most 4 GiB; CUDA: 25 %, at most 16 GiB) and logged."""
    device_cache_policy: Literal["2q", "lru"] = "2q"
    """Which idle version leaves the device first: ``2q`` (a first touch waits in a short
    probation queue, so a burst of one-off adapters cannot flush the hot ones) or ``lru``."""
    max_resident_adapters: int | None = Field(None, ge=1)
    """Optional cap on the number of adapter versions on the device, on top of
    ``device_cache_bytes`` (unset: bytes only)."""
    preload_adapters: int = Field(64, ge=0)
    """Active versions loaded at startup (pinned names first) while the device tier has room;
    the rest load on first use, so startup time does not grow with the store."""
    max_loading_adapters: int = Field(4, ge=1, le=64)
    """Adapter versions read and validated from disk at once (the registry's loader threads)."""
    max_pending_loads: int = Field(256, ge=1)
    """Most adapter loads in progress at once (queued for a loader, reading, or waiting for the
    engine); past it a request for another non-resident version gets 503 + Retry-After at once
    (``cold_overload``). Requests for resident versions are never refused for it."""
    pinned: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Adapter names that are never evicted (comma-separated in the environment)."""
    bank_capacity: int = Field(8, ge=1)
    """Slots per adapter stack when a stack is created; the engine grows a full stack between
    batches."""
    featurize_threads: int = Field(2, ge=1, le=64)
    """Threads decoding audio and computing features (off the event loop, before batching)."""
    admin_token: SecretStr = SecretStr("")
    """Bearer token of the mutating adapter routes. Required unless ``allow_no_admin_token`` or
    ``admin_token_file``."""
    admin_token_file: Path | None = None
    """File holding the admin token (e.g. a Docker secret, ``/run/secrets/lookaside_admin``), so
    the token appears neither in the environment nor on a command line; read at startup."""
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
    ray: bool = False
    """Serve on Ray Serve (``lookaside-serve --ray``): an ingress deployment with this HTTP API
    and ``ray_replicas`` model replicas, each an engine with its own bank, routed by adapter
    (docs/ray.md). Off: this one process serves everything."""
    ray_address: str = "auto"
    """Ray cluster to join: ``auto`` starts a local Ray instance (or joins the one ``RAY_ADDRESS``
    names); ``<host>:6379`` or ``ray://<host>:10001`` joins that cluster."""
    ray_replicas: int = Field(1, ge=1, le=1024)
    """Model replicas (each loads the backbone once and keeps its own resident adapters)."""
    ray_max_replicas: int | None = Field(None, ge=1, le=1024)
    """Autoscale the model replicas between ``ray_replicas`` and this many by ongoing calls per
    replica (Ray Serve's autoscaler; scale-down drains a replica first). Unset: a fixed count."""
    ray_target_ongoing_requests: float = Field(8.0, gt=0.0, le=4096.0)
    """With ``ray_max_replicas``: the ongoing calls per model replica the autoscaler aims for."""
    ray_ingress_replicas: int = Field(1, ge=1, le=64)
    """Ingress replicas (HTTP, decoding, features, version resolution; no backbone forward)."""
    ray_adapters_per_replica: int = Field(16, ge=1, le=4096)
    """Adapter versions one model replica keeps resident (Ray Serve's multiplexing cache); the
    router sends an adapter's rows to the replicas that hold it."""
    ray_gpus_per_replica: float | None = Field(None, ge=0.0, le=8.0)
    """GPUs Ray reserves for each model replica; unset: 1 when ``device`` is not ``cpu`` and the
    cluster has GPUs, else 0 (fractions share one GPU between replicas)."""
    ray_sync_s: float = Field(0.5, gt=0.0, le=60.0)
    """How often each Ray process reads the store's change journal: activations by another
    ingress replica and deletions reach every process within this (plus one read)."""

    stream_max_sessions: int = Field(64, ge=1, le=100_000)
    """Live ``/stream`` sessions at once (opening ones included); one more is closed with 4429.
    Must be under ``max_connections`` (left unset, it is lowered to ``max_connections - 1``): a
    WebSocket upgrade bypasses uvicorn's ``limit_concurrency``, yet each session holds a
    connection. Worst case of one session
    (docs/streaming.md has the formula): the ring (longest window plus one frame, float32), one
    frame and its decoded copies, the samples and features of ``stream_max_pending_windows``
    windows, ``stream_max_unsent_bytes`` of answered messages and the small records queued
    behind a pending window: about 22 MiB with the defaults for a 5.12 s adapter at 48 kHz, so
    64 sessions hold about 1.4 GiB at most (more with many adapters of distinct features)."""
    stream_max_seconds: float = Field(3600.0, gt=0.0)
    """Most seconds of audio one ``/stream`` session may send; then it is closed with 4413."""
    stream_idle_timeout_s: float = Field(30.0, gt=0.0)
    """A ``/stream`` session with no frame for this long, or whose wall time since its first
    audio frame passes the audio it sent by more than this (a trickle slower than real time), is
    closed with 4408; so a session lasts at most ``stream_max_seconds`` plus this."""
    stream_open_timeout_s: float = Field(5.0, gt=0.0, le=300.0)
    """A ``/stream`` connection must send its opening message within this many seconds (else
    4408); resolving its adapters then has at most ``request_timeout_s`` more."""
    stream_max_ahead_s: float = Field(5.0, gt=0.0)
    """How far ahead of real time a ``/stream`` client may send (audio seconds received minus
    wall seconds since its first frame); beyond it the session is closed with 4430."""
    stream_max_frame_bytes: int = Field(1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    """Largest WebSocket message (binary frame or text) a client may send: uvicorn's
    ``ws_max_size`` refuses a larger one with 1009, and the session itself checks every frame
    (1009 ``frame_too_big``) for servers configured otherwise (Ray Serve's proxy)."""
    stream_max_pending_windows: int = Field(8, ge=1, le=1024)
    """Windows of one ``/stream`` session in the engine at once; a window cut beyond this is
    dropped (the client gets a ``dropped`` message) rather than letting the lag grow."""
    stream_max_unsent: int = Field(64, ge=1, le=100_000)
    """Answered ``/stream`` window messages of one session that could be sent now (the
    answered front of each track's queue: one window still in the engine holds back only its
    own track) and wait for the client to read them; beyond it the session is closed with
    4431."""
    stream_max_unsent_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    """Bytes of every ``/stream`` message (windows and ``dropped``) of one session that could
    be sent now (one window may carry ``top_k`` 1000 labels x 16 adapters); beyond it, with more
    than one message waiting, the session is closed with 4431."""
    stream_max_sample_rate: int = Field(48_000, ge=1_000, le=384_000)
    """Highest ``sample_rate`` a ``/stream`` client may open with (4400 beyond: resample before
    sending); pending windows hold their samples at the client's rate."""
    stream_min_hop_s: float = Field(0.1, ge=0.01)
    """Shortest hop a ``/stream`` client may ask for (each window is one engine row)."""

    @field_validator("pinned", mode="before")
    @classmethod
    def _split_pinned(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _admin_token_required(self) -> ServiceSettings:
        if self.admin_token_file is not None:
            if self.admin_token.get_secret_value():
                raise ValueError("set admin_token or admin_token_file, not both")
            self.admin_token = SecretStr(read_token_file(self.admin_token_file))
        if self.engine_dead_s < self.engine_stall_s:
            raise ValueError(
                f"engine_dead_s ({self.engine_dead_s}) must be >= engine_stall_s "
                f"({self.engine_stall_s}): liveness fails only after readiness did"
            )
        if not self.admin_token.get_secret_value() and not self.allow_no_admin_token:
            raise ValueError(
                "admin_token is empty: set LOOKASIDE_ADMIN_TOKEN to a secret (e.g. "
                "`openssl rand -hex 32`), or set LOOKASIDE_ALLOW_NO_ADMIN_TOKEN=true for local "
                "development only"
            )
        if self.ray_max_replicas is not None and self.ray_max_replicas < self.ray_replicas:
            raise ValueError("ray_max_replicas must be at least ray_replicas (the minimum)")
        if self.ort_precision == "int8" and self.device == "cuda":
            raise ValueError("ort_precision int8 is the CPU path; use fp16 (or fp32) on cuda")
        if self.ort_precision == "fp16" and self.device == "cpu":
            raise ValueError("ort_precision fp16 needs device cuda; use int8 (or fp32) on cpu")
        if self.dtype == "fp16" and self.device == "cpu":
            raise ValueError(
                "dtype fp16 needs device cuda (or auto on a GPU host); use bf16 on cpu"
            )
        return self

    @model_validator(mode="after")
    def _stream_sessions_under_connections(self) -> ServiceSettings:
        """Live sessions must leave connections for the rest of the API: a WebSocket upgrade
        is not counted by uvicorn's ``limit_concurrency``, yet each session holds one."""
        if self.stream_max_sessions < self.max_connections:
            return self
        if "stream_max_sessions" not in self.model_fields_set and self.max_connections > 1:
            self.stream_max_sessions = self.max_connections - 1  # the default, lowered
            return self
        raise ValueError(
            f"stream_max_sessions ({self.stream_max_sessions}) must be under max_connections "
            f"({self.max_connections}): each live /stream session holds a connection, and "
            "WebSocket upgrades are not counted by uvicorn's limit_concurrency, so sessions "
            "could take every connection; raise max_connections or lower stream_max_sessions"
        )

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
