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

__all__ = ["REPLICA_ENV", "Coalescer", "DeploymentHandles", "ModelVersions", "model_id"]

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

    async def predict_many(self, requests: list[list[dict[str, Any]]], name: str, version: int) -> list[Any]:
        """Several requests' rows in one call (what a router coalesced): each request's answer, or the
        platform error its own rows raised (a client's mistake fails that request alone)."""
        predictor = await self._predictor(f"{name}@{version}")
        out: list[Any] = [None] * len(requests)
        prepared: list[tuple[int, Any]] = []
        for i, rows in enumerate(requests):
            try:
                prepared.append((i, predictor.prepare(rows)))
            except AiInfraError as e:
                out[i] = e
        if prepared:
            scores = await self._forward(predictor, np.concatenate([x for _, x in prepared]))
            start = 0
            for i, x in prepared:
                out[i] = predictor.answer(scores[start:start + len(x)])
                start += len(x)
        return out

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


class Coalescer:
    """Requests to one deployment, at most ``in_flight`` calls at a time: requests that come while that many
    are out wait, and the next call carries all of them (up to ``MAX_COALESCED_ROWS`` rows). No waiting for a
    batch to fill: with a call free, a request goes at once. ``call(list of requests' rows)`` answers each
    request with its rows' answer or the error of its own rows; a failure of the call itself fails every
    request it carried."""

    def __init__(self, call: Any, in_flight: int) -> None:
        self._call, self._in_flight = call, in_flight
        self._waiting: list[tuple[list[dict[str, Any]], asyncio.Future]] = []
        self._running = 0

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting)

    async def submit(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        if self._running < self._in_flight:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        answer = await future
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, n = [], 0
                while self._waiting and (not batch or n + len(self._waiting[0][0]) <= MAX_COALESCED_ROWS):
                    rows, future = self._waiting.pop(0)
                    batch.append((rows, future))
                    n += len(rows)
                try:
                    answers = await self._call([rows for rows, _ in batch])
                except BaseException as e:  # noqa: BLE001 - handed to each waiting request, raised there
                    answers = [e] * len(batch)
                for (_, future), answer in zip(batch, answers):
                    if not future.done():  # its caller may have gone (a client that hung up)
                        future.set_result(answer)
        finally:
            self._running -= 1


# One coalesced call's rows at most (a single request may hold more, up to the row limit, and goes alone).
MAX_COALESCED_ROWS = 10_000


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
        self._in_flight = config.serve.model_calls_in_flight
        self._calls: dict[tuple[str, str], Coalescer] = {}

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
            if not self._in_flight:
                return await self._handle(role, version).predict.remote(rows, version.name, version.version)
            key = (role, model_id(version))
            calls = self._calls.get(key)
            if calls is None:
                if len(self._calls) >= 1024:  # as the handles: bounded over versions that come and go
                    self._calls = {k: c for k, c in self._calls.items() if c.busy}
                handle = self._handle(role, version)
                calls = self._calls[key] = Coalescer(
                    lambda batch: handle.predict_many.remote(batch, version.name, version.version), self._in_flight)
            return await calls.submit(rows)
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
