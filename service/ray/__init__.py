"""Lookaside on Ray Serve: the same HTTP API over N model replicas, routed by adapter.

``lookaside-serve --ray --ray-replicas N`` (:mod:`service.ray.app`) deploys two Ray Serve
deployments (docs/ray.md):

- **ingress** (:mod:`service.ray.ingress`): the FastAPI app of :func:`service.app.create_app`
  (same routes, errors, OpenAPI), whose engine and registry are remote
  (:mod:`service.ray.remote`): it decodes and featurises, resolves each adapter to a version from
  the shared store, and sends one call per adapter to the model deployment with the multiplexed
  model id ``name@version``; admin routes write the store once.
- **model replicas** (:mod:`service.ray.replica`): each one engine with its own bank (torch or
  ONNX Runtime), keeping at most ``ray_adapters_per_replica`` versions resident through
  ``serve.multiplexed``, so Ray's router sends an adapter's rows to the replicas that hold it.
  Rows of different adapters that reach one replica are batched together as in one process.

Nothing here is imported unless ``ray`` is set: the one-process server does not need Ray.
"""
