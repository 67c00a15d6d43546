"""The one shape every platform service has: a plain core, a typed client over a backend, one actor factory.

- The **core** is a plain class (no Ray) built from the ``PlatformConfig`` and its arguments alone, with its
  clock, stores and collaborators injected (``ModelRegistry``, ``OnlineStore``, ``MonitorService``,
  ``AutopilotExecutor``). It is what the unit tests build.
- The **client** (``RegistryClient``, ``MonitorClient``, ...) has the typed methods callers use and reaches the
  core through a ``ServiceBackend``: ``ActorBackend`` on a cluster, ``LocalBackend`` in the same process.
- The **factory** below (``start_actor``) makes any core a named detached actor from an ``ActorSpec``. Ray
  restarts it after a crash (``max_restarts=-1``) by calling the constructor again, so a core keeps nothing
  that is not in its stores.

All Ray calls to a platform actor go through ``ActorBackend``, and the timeouts and retries for them are
declared here once (``CALL_TIMEOUT_S``).

Ray is imported inside the functions, not at the top: clients are built by ``aiinfra.connect()``, and Ray
reads its authentication mode (``RAY_AUTH_MODE``) once, when it is imported. ``connect`` sets that mode for
the cluster it joins before Ray loads, so importing a client must not load Ray.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiinfra.cluster_access import require_shared_state
from aiinfra.config import PlatformConfig
from aiinfra.errors import AiInfraError, ServiceUnavailable

__all__ = [
    "CALL_TIMEOUT_S",
    "ActorBackend",
    "ActorSpec",
    "LocalBackend",
    "ServiceBackend",
    "actor_backend",
    "find_actor",
    "get_actor",
    "named_actor_backend",
    "ray_job_id",
    "start_actor",
]

# How long a client waits for a service call, retries across an actor restart included. A call that runs
# longer (a monitor's rebase rebuilds its reference) still fits: the slowest measured here is a few seconds.
CALL_TIMEOUT_S = 60.0


def ray_job_id() -> str | None:
    """The Ray job this process belongs to (a driver's, or an actor's creator's), hex; None outside Ray.

    Ray is not imported for it: a process that has not loaded Ray has not joined a cluster.
    """
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return str(ray.get_runtime_context().get_job_id())
    except Exception:  # noqa: BLE001 - a worker shutting down: no job to name
        return None


class ServiceBackend(Protocol):
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


class LocalBackend:
    """Calls the service's plain class in this process."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.service, method)(*args, **kwargs)


@dataclass(frozen=True)
class ActorSpec:
    """How one platform service runs as an actor.

    Args:
        name: the actor's name in the platform namespace (``registry``, ``monitor:churn``).
        core: the plain class the actor hosts; ``core(config, *args)`` builds it from its stores.
        options: further ``.options()`` for this service (say ``max_concurrency`` for one that blocks in a call).
    """

    name: str
    core: type
    options: dict[str, Any] = field(default_factory=dict)


class _Hosted:
    """What every hosted core gets besides its own methods."""

    def pid(self) -> int:
        return os.getpid()


@functools.cache
def _actor_class(core: type) -> Any:
    import ray

    def __init__(self: Any, config: PlatformConfig, *args: Any, **kwargs: Any) -> None:
        require_shared_state(config)  # on every (re)start: a restart may land on a node the cluster has grown by
        core.__init__(self, config, *args, **kwargs)

    # A subclass named as the core, so the actor's class in the dashboard is the core's own name.
    return ray.remote(type(core.__name__, (core, _Hosted), {"__init__": __init__}))


def start_actor(spec: ActorSpec, config: PlatformConfig, *args: Any) -> Any:
    """The service's actor, started first if it is not running (detached, restartable, on no CPU of its own).

    Raises:
        InvalidInput: the cluster has several nodes and the config's state is on one node's disk.
    """
    require_shared_state(config)
    return _actor_class(spec.core).options(
        name=spec.name,
        namespace=config.namespace,
        lifetime="detached",
        get_if_exists=True,
        # A control-plane actor must never take a CPU that Train, Data or Serve needs.
        num_cpus=0,
        max_restarts=-1,
        # Calls are not retried by Ray: the clients retry (ActorBackend), and mutating calls are idempotent
        # (an idempotency key, or an operation that sets rather than toggles), so a call that ran before a
        # crash is not applied twice.
        max_task_retries=0,
        **spec.options,
    ).remote(config, *args)


def find_actor(spec: ActorSpec, config: PlatformConfig) -> Any | None:
    """The service's running actor, or None when it is not running."""
    import ray

    try:
        return ray.get_actor(spec.name, namespace=config.namespace)
    except ValueError:
        return None


def get_actor(spec: ActorSpec, config: PlatformConfig, *args: Any, create: bool = True) -> Any:
    """The service's actor: started first when ``create``, else the running one.

    Raises:
        ValueError: it is not running and ``create`` is false.
    """
    if create:
        return start_actor(spec, config, *args)
    handle = find_actor(spec, config)
    if handle is None:
        raise ValueError(f"no actor {spec.name!r} in namespace {config.namespace!r}")
    return handle


def actor_backend(spec: ActorSpec, config: PlatformConfig, *args: Any, create: bool = False,
                  timeout_s: float = CALL_TIMEOUT_S) -> ActorBackend:
    """A backend that reaches the service's actor: started on first use when ``create``, else it must be running."""

    def handle() -> Any:
        if create:
            return start_actor(spec, config, *args)
        found = find_actor(spec, config)
        if found is None:
            raise ServiceUnavailable(
                f"the platform service {spec.name!r} is not running in namespace {config.namespace!r} of this "
                "Ray cluster; start it with `aiinfra up` or aiinfra.connect()"
            )
        return found

    return ActorBackend(handle, service=spec.name, timeout_s=timeout_s)


def named_actor_backend(name: str, namespace: str, *, timeout_s: float = CALL_TIMEOUT_S) -> ActorBackend:
    """A backend to a running service found by its name alone: what a Ray Train worker has (no platform
    config: Ray Train shows a loop's config in the dashboard, so a database URL never travels in one)."""

    def handle() -> Any:
        import ray

        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            raise ServiceUnavailable(f"the {name} actor is not running in namespace {namespace!r}; "
                                     "start the platform (`aiinfra up`) or `aiinfra.connect()` first") from None

    return ActorBackend(handle, service=name, timeout_s=timeout_s)


class ActorBackend:
    """All Ray calls to a platform actor go through here.

    The handle is looked up on the first call, not before, so a client can be made before its service
    starts. A call that fails because the actor died (or is restarting) is retried until ``timeout_s``
    passes; mutating calls are idempotent (``commit_version`` by its key, ``set_alias`` by its target), so a
    retry of a call that did run is harmless. Errors the service raised on purpose come back as themselves,
    not wrapped.
    """

    def __init__(self, get_handle: Callable[[], Any], *, service: str = "registry",
                 timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._get_handle = get_handle
        self.service = service
        self._handle: Any = None
        self.timeout_s = timeout_s

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        deadline = time.monotonic() + self.timeout_s
        delay = 0.05
        while True:
            if self._handle is None:
                self._handle = self._get_handle()  # a service that is not running says so (ServiceUnavailable)
            try:
                return ray.get(getattr(self._handle, method).remote(*args, **kwargs), timeout=self.timeout_s)
            except RayTaskError as e:
                if isinstance(e.cause, AiInfraError):
                    raise e.cause from None
                raise
            except (RayActorError, GetTimeoutError) as e:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailable(
                        f"the {self.service} actor did not answer {method} within {self.timeout_s:.0f}s ({type(e).__name__}); "
                        "check `ray status` and the actor's logs in the Ray dashboard"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                try:
                    self._handle = self._get_handle()
                except Exception:  # noqa: BLE001 - not found while restarting: keep the old handle, retry
                    pass
