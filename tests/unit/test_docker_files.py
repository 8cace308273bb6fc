"""The Dockerfile, .dockerignore, docker-compose.yml and Grafana's provisioning hold the
essentials and agree with each other (no Docker engine here: parsed)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
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


def test_dockerfile_runs_the_console_script_as_non_root(
    dockerfile: list[tuple[str, str]],
) -> None:
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


def test_the_image_has_one_copy_of_cuda_from_the_wheels(dockerfile: list[tuple[str, str]]) -> None:
    """No CUDA base image: torch's and onnxruntime-gpu's CUDA come from NVIDIA's wheels, whose
    folders LD_LIBRARY_PATH names in the venv of the base image's own Python version."""
    froms = [rest.split()[0] for word, rest in dockerfile if word == "FROM"]
    assert len(set(froms)) == 1  # the venv built in one stage runs in the other: same Python
    match = re.fullmatch(r"python:(3\.\d+)-slim(-\w+)?", froms[0])
    assert match, froms[0]
    env = _env(dockerfile)
    folders = env["LD_LIBRARY_PATH"].split(":")
    site = f"/opt/venv/lib/python{match.group(1)}/site-packages/nvidia/"
    assert folders
    assert all(f.startswith(site) for f in folders), folders
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    # the torch this repository pins is a CUDA build whose libraries come as wheels
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("torch==") for d in deps)
    assert any(d.startswith("onnxruntime-gpu") for d in deps)


def _ignored(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore's patterns leave ``path`` out (the last matching pattern wins)."""
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or any(
            pattern.startswith("**/") and fnmatch.fnmatch(part, pattern[3:]) for part in parts
        ):
            out = not negate
    return out


def test_dockerignore_keeps_the_build_context_to_what_the_image_copies(
    dockerfile: list[tuple[str, str]],
) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for heavy in (".venv", ".git", "build", "runs", "data", "adapters_store", ".mypy_cache"):
        assert _ignored(patterns, heavy), heavy
    assert _ignored(patterns, "service/routes/__pycache__")
    assert _ignored(patterns, "admin_token")  # a secret never enters the context
    copied = [
        src
        for word, rest in dockerfile
        if word == "COPY" and not rest.startswith("--from")
        for src in shlex.split(rest)[:-1]
    ]
    assert {"pyproject.toml", "README.md", "lookaside", "service"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not _ignored(patterns, src), f".dockerignore leaves out {src}, which is copied"
    for path in (ROOT / "service" / "static").rglob("*"):
        assert not _ignored(patterns, path.relative_to(ROOT).as_posix()), path


def test_the_installed_package_carries_every_static_file() -> None:
    """``pip install .`` (the image) installs what package-data's globs match, and nothing
    else of service/static."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["service"]
    static = ROOT / "service"
    files = [p for p in (static / "static").rglob("*") if p.is_file()]
    assert files
    matched = {p for pattern in globs for p in static.glob(pattern) if p.is_file()}
    missing = sorted(p.relative_to(ROOT).as_posix() for p in files if p not in matched)
    assert not missing, missing


def _volume(spec: str) -> list[str]:
    """``source:target[:mode]`` of a volume, a ``${VAR:-default}`` source read as its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", spec).split(":")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    return {dst: src for src, dst, *_ in map(_volume, service["volumes"]) if src[0] in "./"}


def test_compose_grafana_is_provisioned_from_the_mounted_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    image, _, tag = grafana["image"].partition(":")
    assert image == "grafana/grafana-oss"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), "pin a release, not latest"
    assert "prometheus" in grafana["depends_on"]
    assert any(p.endswith(":3000") for p in grafana["ports"])
    assert "grafana_data" in compose["volumes"]
    mounts = _mounts(grafana)
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    # the data source is docker-compose's prometheus service on its container port
    prom_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{prom_port}"
    assert datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "lookaside.yml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    dashboards = ROOT / mounts[folder]  # the provider reads a folder compose mounts
    dashboard = json.loads((dashboards / "lookaside.json").read_text())
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/lookaside.json"
    uids = {
        t["datasource"]["uid"]
        for panel in dashboard["panels"]
        for t in [panel, *panel["targets"]]
        if "datasource" in t
    }
    assert uids == {datasource["uid"]}


def test_compose_offline_file_backbone_loads_from_the_models_mount(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/gpu.md's offline command: LOOKASIDE_BACKBONE=file:/models/<file> with ./models
    mounted read-only; a backbone written where the docs say loads from that path with the hub
    switched off (the container's /models replaced by the host folder)."""
    from lookaside.backbones import build_random, load_backbone, save_backbone

    svc = compose["services"]["lookaside"]
    (models,) = [v for v in svc["volumes"] if _volume(v)[1] == "/models"]
    assert models.startswith("${LOOKASIDE_MODELS_DIR:-./models}:")
    assert _volume(models)[2] == "ro"
    text = (ROOT / "docs" / "gpu.md").read_text()
    shown = re.findall(r"LOOKASIDE_BACKBONE=(file:/models/[\w.-]+\.safetensors)", text)
    assert shown, "docs/gpu.md shows the offline file: backbone"
    saved = re.findall(r"save_backbone\(.*?,\s*['\"]models/([\w.-]+)['\"]\s*\)", text, re.S)
    assert saved, "docs/gpu.md shows how to write the file into ./models"
    assert {s.removeprefix("file:/models/") for s in shown} == set(saved)
    host = tmp_path / "models"
    host.mkdir()
    original = build_random("test_vit", seed=3)
    save_backbone(original, host / saved[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_backbone(shown[0].replace("file:/models", f"file:{host}"))
    assert loaded.fingerprint() == original.fingerprint()
