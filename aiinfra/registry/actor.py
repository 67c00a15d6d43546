"""The registry as the named detached actor ``registry`` in namespace ``aiinfra``.

The only module of the registry that imports Ray. The actor is the plain ``ModelRegistry``
built from the config alone, so that when Ray restarts it (``max_restarts=-1``) after a
crash the constructor reloads everything from the metadata DB: nothing lives only in memory.
"""

from __future__ import annotations

import os

import ray

from aiinfra.config import PlatformConfig
from aiinfra.registry.core import ModelRegistry
from aiinfra.storage import open_artifact_store, open_metadata_db

__all__ = ["REGISTRY_ACTOR", "RegistryService", "get_registry_actor"]

REGISTRY_ACTOR = "registry"


class RegistryService(ModelRegistry):
    """What runs inside the actor: the registry, opened from the platform config."""

    def __init__(self, config: PlatformConfig) -> None:
        super().__init__(open_metadata_db(config.metadata_url), open_artifact_store(config.storage_root))

    def pid(self) -> int:
        return os.getpid()


def get_registry_actor(config: PlatformConfig, *, create: bool = True) -> ray.actor.ActorHandle:
    """Return the running registry actor, starting it first when ``create`` is set.

    Raises:
        ValueError: (from Ray) it is not running and ``create`` is false.
    """
    if not create:
        return ray.get_actor(REGISTRY_ACTOR, namespace=config.namespace)
    return (
        ray.remote(RegistryService)
        .options(
            name=REGISTRY_ACTOR,
            namespace=config.namespace,
            lifetime="detached",
            get_if_exists=True,
            # A control-plane actor: it must never take a CPU that Train or Data needs.
            num_cpus=0,
            max_restarts=-1,
            # Calls are not retried by Ray: the client retries, with an idempotency key,
            # so a call that ran before the crash is not applied twice.
            max_task_retries=0,
        )
        .remote(config)
    )
