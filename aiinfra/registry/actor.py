"""The registry as the named detached actor ``registry`` in namespace ``aiinfra``.

The actor hosts ``RegistryService``: the plain ``ModelRegistry`` opened from the config alone, so that
when Ray restarts it after a crash the constructor reloads everything from the metadata DB and nothing
lives only in memory. ``aiinfra.service`` makes it an actor.
"""

from __future__ import annotations

from typing import Any

from aiinfra.config import PlatformConfig
from aiinfra.registry.core import ModelRegistry
from aiinfra.service import ActorSpec, get_actor
from aiinfra.storage import open_artifact_store, open_metadata_db

__all__ = ["REGISTRY", "REGISTRY_ACTOR", "RegistryService", "get_registry_actor"]

REGISTRY_ACTOR = "registry"


class RegistryService(ModelRegistry):
    """The registry, opened from the platform config."""

    def __init__(self, config: PlatformConfig) -> None:
        super().__init__(open_metadata_db(config.metadata_url, create=False), open_artifact_store(config.storage_root))


REGISTRY = ActorSpec(REGISTRY_ACTOR, RegistryService)


def get_registry_actor(config: PlatformConfig, *, create: bool = True) -> Any:
    """The running actor, started first when ``create`` is set (ValueError when missing and not ``create``)."""
    return get_actor(REGISTRY, config, create=create)
