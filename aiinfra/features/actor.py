"""The online store as the named detached actor ``feature_store`` in namespace ``aiinfra``."""

from __future__ import annotations

import os

import ray

from aiinfra.config import PlatformConfig
from aiinfra.features.online import OnlineStore
from aiinfra.storage import open_metadata_db

__all__ = ["FEATURE_STORE_ACTOR", "FeatureStoreService", "get_feature_store_actor"]

FEATURE_STORE_ACTOR = "feature_store"


class FeatureStoreService(OnlineStore):
    """What runs inside the actor: the online store, reloaded from the metadata DB on every (re)start."""

    def __init__(self, config: PlatformConfig) -> None:
        super().__init__(open_metadata_db(config.metadata_url))

    def pid(self) -> int:
        return os.getpid()


def get_feature_store_actor(config: PlatformConfig, *, create: bool = True) -> ray.actor.ActorHandle:
    if not create:
        return ray.get_actor(FEATURE_STORE_ACTOR, namespace=config.namespace)
    return (
        ray.remote(FeatureStoreService)
        .options(
            name=FEATURE_STORE_ACTOR, namespace=config.namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_restarts=-1, max_task_retries=0,
        )
        .remote(config)
    )
