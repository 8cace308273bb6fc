"""The Ray Serve config files (docker/ray-serve.yaml, docker/rayservice.yaml) deploy what
docs/ray.md says, checked without a Ray cluster: Ray's own schema, the real settings, the
deployment names the builder makes, the GPU request and the shared store's mounts.

The Ray, Serve and kubectl commands docs/ray.md shows (``shell`` blocks; tests/unit/
test_docs_commands.py checks the ``bash`` ones) are parsed by Ray's own command-line definitions.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.scripts.scripts import start as ray_start
from ray.serve._private.build_app import build_app
from ray.serve.schema import ServeDeploySchema
from ray.serve.scripts import cli as serve_cli

from service.ray.app import app_builder
from service.ray.wire import APP_NAME, INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT
from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVE_FILE = ROOT / "docker" / "ray-serve.yaml"
RAYSERVICE_FILE = ROOT / "docker" / "rayservice.yaml"
RAY_DOC = ROOT / "docs" / "ray.md"


def _serve_config() -> dict[str, Any]:
    data = yaml.safe_load(SERVE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _application(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    assert isinstance(app, dict)
    return app


def _settings(args: dict[str, Any]) -> ServiceSettings:
    """The settings ``args`` make, without the token file (a secret mounted on the nodes)."""
    local = {k: v for k, v in args.items() if k != "admin_token_file"}
    return ServiceSettings(_env_file=None, **local, allow_no_admin_token=True)


def _deployments(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in app["deployments"]}


def test_serve_config_validates_against_rays_schema() -> None:
    config = _serve_config()
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.name == APP_NAME
    assert app.route_prefix == "/"
    module, _, attr = app.import_path.partition(":")
    assert getattr(importlib.import_module(module), attr) is app_builder
    assert {d.name for d in app.deployments} == {MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT}


def test_every_arg_is_a_setting_with_the_value_given() -> None:
    args = _application(_serve_config())["args"]
    # ServiceSettings ignores unknown keys (extra="ignore"): a misspelt arg would vanish silently
    unknown = set(args) - set(ServiceSettings.model_fields)
    assert not unknown, unknown
    assert args["admin_token_file"] == "/run/secrets/lookaside/admin_token"
    settings = _settings(args)
    for key, value in args.items():
        if key != "admin_token_file":
            got = getattr(settings, key)
            assert (str(got) if isinstance(got, Path) else got) == value, key
    assert settings.device == "cuda"
    assert settings.dtype == "bf16"
    assert settings.ray_adapters_per_replica == 32


def test_deployment_overrides_agree_with_the_settings() -> None:
    """The file's per-deployment overrides say what the args say (and the drain bound)."""
    config = _serve_config()
    app = _application(config)
    settings = _settings(app["args"])
    deployments = _deployments(app)
    model, ingress = deployments[MODEL_DEPLOYMENT], deployments[INGRESS_DEPLOYMENT]
    scaling = model["autoscaling_config"]
    assert scaling["min_replicas"] == settings.ray_replicas
    assert scaling["max_replicas"] == settings.ray_max_replicas
    assert scaling["target_ongoing_requests"] == settings.ray_target_ongoing_requests
    assert model["ray_actor_options"]["num_gpus"] == settings.ray_gpus_per_replica == 1
    assert "num_replicas" not in model
    assert ingress["num_replicas"] == settings.ray_ingress_replicas
    assert "num_gpus" not in ingress.get("ray_actor_options", {})
    drain = settings.request_timeout_s + settings.engine_stall_s
    assert model["graceful_shutdown_timeout_s"] == ingress["graceful_shutdown_timeout_s"] == drain
    # Ray's proxy timeout is a backstop: it must not cut a slow body plus its answer short
    http = config["http_options"]
    assert http["request_timeout_s"] >= settings.body_timeout_s + settings.request_timeout_s
    assert http["keep_alive_timeout_s"] == settings.keep_alive_timeout_s


def test_the_builder_makes_the_deployments_the_file_overrides() -> None:
    """``app_builder(args)`` builds deployments with exactly the names the file overrides (Ray
    refuses an override of a deployment that does not exist), already autoscaled as the file."""
    app = _application(_serve_config())
    args = {k: v for k, v in app["args"].items() if k != "admin_token_file"}
    built = build_app(app_builder({**args, "allow_no_admin_token": True}), name=APP_NAME)
    by_name = {d.name: d for d in built.deployments}
    assert set(by_name) == set(_deployments(app))
    assert built.ingress_deployment_name == INGRESS_DEPLOYMENT
    code = by_name[MODEL_DEPLOYMENT]._deployment_config.autoscaling_config
    assert code is not None
    scaling = _deployments(app)[MODEL_DEPLOYMENT]["autoscaling_config"]
    assert (code.min_replicas, code.max_replicas, code.target_ongoing_requests) == (
        scaling["min_replicas"],
        scaling["max_replicas"],
        scaling["target_ongoing_requests"],
    )


@pytest.fixture(scope="module")
def rayservice() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the PersistentVolumeClaim, the RayService)."""
    docs = [d for d in yaml.safe_load_all(RAYSERVICE_FILE.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(docs) == len(by_kind) == 2
    return by_kind["PersistentVolumeClaim"], by_kind["RayService"]


def test_rayservice_serves_the_same_application(
    rayservice: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    _, service = rayservice
    assert service["apiVersion"] == "ray.io/v1"
    text = service["spec"]["serveConfigV2"]
    assert isinstance(text, str)  # KubeRay takes the Serve config as a YAML string
    config = yaml.safe_load(text)
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == _application(_serve_config())["import_path"]
    assert config["applications"] == _serve_config()["applications"]


def _groups(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def test_rayservice_gpu_workers_autoscale_and_the_head_has_no_gpu(
    rayservice: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    _, service = rayservice
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    for container in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
    (gpu,) = cluster["workerGroupSpecs"]
    for container in gpu["template"]["spec"]["containers"]:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    scaling = _deployments(_application(_serve_config()))[MODEL_DEPLOYMENT]["autoscaling_config"]
    # one model replica per GPU pod: the group's bounds are the deployment's
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (
        scaling["min_replicas"],
        scaling["max_replicas"],
    )


def test_every_container_mounts_the_shared_store_and_the_token(
    rayservice: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    pvc, service = rayservice
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    claim = pvc["metadata"]["name"]
    args = _application(_serve_config())["args"]
    token_dir = str(Path(args["admin_token_file"]).parent)
    for group in _groups(service):
        spec = group["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
        for container in spec["containers"]:
            mounts = container["volumeMounts"]
            store = [m for m in mounts if claims.get(m["name"]) == claim]
            assert store, container["name"]
            assert any(args["store"].startswith(m["mountPath"] + "/") for m in store)
            assert any(m["name"] in secrets and m["mountPath"] == token_dir for m in mounts)


def _shown_ray_commands() -> list[str]:
    text = RAY_DOC.read_text()
    found = []
    for block in re.findall(r"```shell\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def test_ray_doc_shows_ray_serve_and_kubectl_commands() -> None:
    heads = {shlex.split(line)[0] for line in _shown_ray_commands()}
    assert {"ray", "serve", "kubectl"} <= heads


@pytest.mark.parametrize("line", _shown_ray_commands())
def test_shown_ray_command_parses(line: str) -> None:
    words = shlex.split(line)
    while "=" in words[0]:  # VAR=value prefixes
        words = words[1:]
    head, args = words[0], words[1:]
    if head == "ray":
        assert args[0] == "start", line
        ray_start.make_context("start", args[1:])  # raises on an unknown option
    elif head == "serve":
        command = serve_cli.commands[args[0]]
        params = command.make_context(args[0], args[1:]).params
        assert (ROOT / params["config_or_import_path"]).is_file(), line
    elif head == "kubectl":
        if "-f" in args:
            assert (ROOT / args[args.index("-f") + 1]).is_file(), line
        else:
            assert args[:3] == ["create", "secret", "generic"], line
    else:
        pytest.fail(f"docs/ray.md: unrecognised command {line!r}")
