"""Deploying Lookaside on Ray Serve: the application graph, the Serve config entry point and
``lookaside-serve --ray``.

- :func:`build_application`: the ingress bound to the model deployment, sized from settings.
- :func:`app_builder`: the same for Ray Serve's config files (``import_path:
  service.ray.app:app_builder``, ``args`` = settings; autoscaling and resources are overridden
  per deployment in the file: docker/ray-serve.yaml, docs/ray.md).
- :func:`serve_forever`: start or join Ray, repair the store, deploy, print the URL, and on
  Ctrl-C or SIGTERM delete the application gracefully (each replica drains what it accepted).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from service.app import open_store
from service.ray.ingress import Ingress
from service.ray.proxy import proxy_environment
from service.ray.replica import ModelReplica
from service.ray.wire import (
    APP_NAME,
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    settings_payload,
)
from service.settings import ServiceSettings

log = logging.getLogger("service.ray")


def build_application(
    settings: ServiceSettings,
    *,
    gpus: float | None = None,
    autoscaling: dict[str, Any] | None = None,
) -> Application:
    """The ingress bound to the model replicas: ``ray_replicas`` of them, or autoscaled up to
    ``ray_max_replicas`` (``autoscaling``: more of Ray's ``autoscaling_config`` keys, e.g.
    delays). ``gpus`` each; default from ``ray_gpus_per_replica``, else 0."""
    payload = settings_payload(settings)
    if gpus is None:
        gpus = settings.ray_gpus_per_replica or 0.0
    drain_s = settings.request_timeout_s + settings.engine_stall_s
    scaling: dict[str, Any] = {"num_replicas": settings.ray_replicas}
    if settings.ray_max_replicas is not None:
        scaling = {
            "autoscaling_config": {
                "min_replicas": settings.ray_replicas,
                "max_replicas": settings.ray_max_replicas,
                "target_ongoing_requests": settings.ray_target_ongoing_requests,
                **(autoscaling or {}),
            }
        }
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        **scaling,
        # one replica's engine bounds its own rows (queue_capacity); Ray's bounds calls
        max_ongoing_requests=settings.queue_capacity,
        max_queued_requests=settings.queue_capacity * 4,
        graceful_shutdown_wait_loop_s=1.0,
        graceful_shutdown_timeout_s=drain_s,
        health_check_period_s=10.0,
        health_check_timeout_s=30.0,
        ray_actor_options={"num_cpus": 1, "num_gpus": gpus},
    )(ModelReplica).bind(payload)
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        num_replicas=settings.ray_ingress_replicas,
        max_ongoing_requests=settings.max_connections,
        graceful_shutdown_wait_loop_s=1.0,
        graceful_shutdown_timeout_s=drain_s,
        ray_actor_options={"num_cpus": 1},
    )(Ingress)
    # A token given as a value (not a file the ingress can read) goes to the ingress as its own
    # argument: Ray keeps deployment arguments in its control store, readable by whoever can
    # reach the cluster, who can run code on it anyway (docs/ray.md: the cluster is the boundary).
    token = None if settings.admin_token_file else settings.admin_token.get_secret_value()
    return ingress.bind(payload, model, token or None)


def app_builder(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: ``args`` are settings (``LOOKASIDE_*`` fill the rest)."""
    return build_application(ServiceSettings(**{**args, "ray": True}))


def _gpus_per_replica(settings: ServiceSettings) -> float:
    """``ray_gpus_per_replica``, else 1 when the model may use a GPU and the cluster has one."""
    if settings.ray_gpus_per_replica is not None:
        return settings.ray_gpus_per_replica
    if settings.device == "cpu":
        return 0.0
    gpus = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
    return 1.0 if gpus > 0 else 0.0


def start_ray(settings: ServiceSettings) -> bool:
    """Join the cluster ``ray_address`` names, or start a local one; True when started here."""
    address = settings.ray_address
    if address == "auto" and not os.environ.get("RAY_ADDRESS"):
        # a local instance: enough logical CPUs for every replica (they are scheduling tokens;
        # the replicas share the machine's cores)
        cpus = max(os.cpu_count() or 1, settings.ray_replicas + settings.ray_ingress_replicas + 1)
        # the processes of the local instance inherit these: its proxy runs the body limits
        os.environ.update(proxy_environment(settings))
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        return True
    ray.init(address=None if address == "auto" else address, logging_level=logging.WARNING)
    return False


def serve_forever(settings: ServiceSettings) -> int:
    """``lookaside-serve --ray``: deploy, serve until Ctrl-C / SIGTERM, then drain and stop."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    started_here = start_ray(settings)
    if started_here:  # nothing else writes the store yet: repair what a crash left (logged)
        open_store(settings.model_copy(update={"ray": False}))
    serve.start(http_options={"host": settings.host, "port": settings.port})
    app = build_application(settings, gpus=_gpus_per_replica(settings))
    serve.run(app, name=APP_NAME, route_prefix="/")
    print(  # noqa: T201
        f"Lookaside serving on {settings.url} over Ray Serve: {settings.ray_replicas} model "
        f"replica(s), {settings.ray_ingress_replicas} ingress (docs: {settings.url}/docs, "
        f"ready: {settings.url}/readyz)",
        flush=True,
    )
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopping: draining every replica (at most %.0f s)", settings.request_timeout_s)
        serve.delete(APP_NAME)
        if started_here:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
    return 130 if signal.SIGINT in received else 0
