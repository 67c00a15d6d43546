"""The model deployments (one per served role) and how the routers reach them over Serve handles.

``ModelVersions`` answers any served model's requests with the version each names; concurrent requests share a
forward pass (``@serve.batch``). ``DeploymentHandles`` is the router's port to them
(``router.ModelDeployments``): the calls over Serve's handles, with Ray's failures turned into the
platform's errors, so the router itself needs no Ray.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from aiinfra.config import PlatformConfig
from aiinfra.errors import AiInfraError, AtCapacity, ServiceUnavailable
from aiinfra.inference.predictor import Predictor
from aiinfra.inference.versions import load_predictor
from aiinfra.registry.client import RegistryClient
from aiinfra.registry.types import ModelVersion

__all__ = ["REPLICA_ENV", "DeploymentHandles", "ModelVersions", "model_id"]

# Serve runs a replica's user code on an event loop in a thread of its own. On a small machine every
# request then crosses threads (and the GIL) once more: running it on the replica's main loop took
# about 15% more throughput at 16 clients here (BENCHMARKS.md). Read when the replica's process imports
# Serve, hence runtime_env. Not RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 as well: it makes a handle's
# `.result()` refuse every caller, and the router's alias follower and shadow comparer call the model
# deployments from their own threads with it.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def model_id(version: ModelVersion) -> str:
    """The multiplexed model id of a version: ``NAME@VERSION`` (a reference the registry resolves)."""
    return f"{version.name}@{version.version}"


@serve.deployment(ray_actor_options={"num_cpus": 0.2, "runtime_env": {"env_vars": REPLICA_ENV}},
                  max_ongoing_requests=32, max_queued_requests=128)
class ModelVersions:
    """Answers requests with the model version each names, for any model of the endpoint; concurrent
    requests share a forward pass.

    Versions are Serve's multiplexed models (``@serve.multiplexed``, model id ``NAME@VERSION``): loaded on
    first use (download hash-checked), the ``serve.max_models_per_replica`` most recently used kept, and
    Serve's handles send a request to a replica that has its version loaded when one does. So the old
    and the new version both answer while an alias moves, and the models of a many-model endpoint share
    the replicas, with the long tail loaded on demand.
    """

    def __init__(self, config: PlatformConfig) -> None:
        device = "cuda" if config.serve.model_gpus > 0 else "cpu"
        registry = RegistryClient.on_cluster(config, create=True)

        async def load(model_id: str) -> Predictor:
            name, _, version = model_id.rpartition("@")
            return await asyncio.to_thread(load_predictor, registry, name, int(version), device)

        # Made here, not as a decorated method: the bound is the config's, known only now. Serve finds an
        # instance attribute made so (serve._private.utils: it looks at the instance's attributes too).
        self._predictor = serve.multiplexed(max_num_models_per_replica=config.serve.max_models_per_replica)(load)

    async def warm(self, name: str, version: int) -> int:
        """Load ``name@version`` now, before any request needs it."""
        await self._predictor(f"{name}@{version}")
        return version

    async def predict(self, rows: list[dict[str, Any]], name: str, version: int) -> list[dict[str, Any]]:
        predictor = await self._predictor(f"{name}@{version}")
        x = predictor.prepare(rows)  # a client's mistake fails this request alone, before batching
        return predictor.answer(await self._forward(predictor, x))

    # No waiting for a batch to fill: a lone request goes at once, and requests that arrive while a
    # forward pass runs are queued and go together in the next.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _forward(self, predictors: list[Any], xs: list[Any]) -> list[Any]:
        out: list[Any] = [None] * len(xs)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(predictors):  # one forward pass per model version in the batch
            groups.setdefault(id(p), []).append(i)
        for idx in groups.values():
            scores = predictors[idx[0]].forward(np.concatenate([xs[i] for i in idx]))
            start = 0
            for i in idx:
                out[i] = scores[start:start + len(xs[i])]
                start += len(xs[i])
        return out


def _transport(handle: Any, config: PlatformConfig) -> Any:
    """The handle over the configured transport (``serve.model_transport``)."""
    if config.serve.model_transport == "grpc":
        # Pickle, not cloudpickle: rows and answers are plain JSON values, and pickle is the faster of the two.
        return handle.options(_by_reference=False, request_serialization="pickle", response_serialization="pickle")
    return handle


class DeploymentHandles:
    """The router's port to the ``ModelVersions`` deployments of the roles that have one.

    Each call names its version's multiplexed model id, so Serve sends it to a replica that has the
    version loaded when one does (and a replica loads it otherwise).
    """

    def __init__(self, config: PlatformConfig, handles: dict[str, Any]) -> None:
        self._handles = {role: _transport(h, config) for role, h in handles.items() if h is not None}
        self.roles = frozenset(self._handles)
        self._by_model: dict[tuple[str, str], Any] = {}

    def _handle(self, role: str, version: ModelVersion) -> Any:
        key = (role, model_id(version))
        handle = self._by_model.get(key)
        if handle is None:
            if len(self._by_model) >= 1024:  # versions come and go over months; the handles for them need not stay
                self._by_model.clear()
            handle = self._by_model[key] = self._handles[role].options(multiplexed_model_id=key[1])
        return handle

    async def answer(self, role: str, version: ModelVersion, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return await self._handle(role, version).predict.remote(rows, version.name, version.version)
        except BackPressureError:
            raise AtCapacity(f"{version.ref} is at capacity; retry with backoff") from None
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, AiInfraError):
                raise cause from None
            raise
        except RayActorError:
            raise ServiceUnavailable(f"a replica serving {version.ref} went away; retry") from None

    def answer_blocking(self, role: str, version: ModelVersion, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._handle(role, version).predict.remote(rows, version.name, version.version).result(timeout_s=60)

    def warm(self, role: str, version: ModelVersion) -> None:
        self._handle(role, version).warm.remote(version.name, version.version).result(timeout_s=300)
