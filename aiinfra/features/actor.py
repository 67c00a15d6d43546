"""The online store as the named detached actor ``feature_store`` in namespace ``aiinfra``.

The actor hosts ``FeatureStoreService``: the plain ``OnlineStore`` reloaded from the metadata DB on every
(re)start. ``aiinfra.service`` makes it an actor.
"""

from __future__ import annotations

from typing import Any

from aiinfra.config import PlatformConfig
from aiinfra.features.online import OnlineStore
from aiinfra.service import ActorSpec, get_actor
from aiinfra.storage import open_metadata_db

__all__ = ["FEATURE_STORE", "FEATURE_STORE_ACTOR", "FeatureStoreService", "get_feature_store_actor"]

FEATURE_STORE_ACTOR = "feature_store"


class FeatureStoreService(OnlineStore):
    """The online store, opened from the platform config."""

    def __init__(self, config: PlatformConfig) -> None:
        super().__init__(open_metadata_db(config.metadata_url, create=False))


FEATURE_STORE = ActorSpec(FEATURE_STORE_ACTOR, FeatureStoreService)


def get_feature_store_actor(config: PlatformConfig, *, create: bool = True) -> Any:
    """The running actor, started first when ``create`` is set (ValueError when missing and not ``create``)."""
    return get_actor(FEATURE_STORE, config, create=create)
