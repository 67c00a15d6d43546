"""``aiinfra.connect()``: the way into a running platform.

Joins ``RAY_ADDRESS`` (or the local cluster that ``ray start``/``aiinfra up`` left running),
or starts an embedded local Ray, then makes sure the platform services exist and returns a
handle to them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from aiinfra.cluster_access import (
    clear_stale_cluster_pointer,
    require_shared_state,
    running_cluster,
    use_cluster_auth,
)
from aiinfra.config import PlatformConfig, load_config
from aiinfra.data.catalog import DatasetCatalog
from aiinfra.features.actor import FEATURE_STORE
from aiinfra.features.client import FeatureStoreClient
from aiinfra.features.online import OnlineStore
from aiinfra.identity.tokens import TokenStore, ensure_admin_token
from aiinfra.registry.actor import REGISTRY
from aiinfra.registry.client import RegistryClient
from aiinfra.registry.core import ModelRegistry
from aiinfra.service import LocalBackend, start_actor
from aiinfra.storage import ArtifactStore, DigestLedger, open_artifact_store, open_metadata_db

__all__ = ["Platform", "connect", "open_local"]

log = logging.getLogger(__name__)


@dataclass
class Platform:
    """Handles to the platform's services. Close it (or use ``with``) to release what it started."""

    config: PlatformConfig
    registry: RegistryClient
    features: FeatureStoreClient
    store: ArtifactStore
    # The dataset catalog, each manifest checked against its SHA-256 in the metadata DB (aiinfra/data/catalog.py).
    datasets: DatasetCatalog
    started_ray: bool = False  # this process started a local cluster (it ends when the process disconnects)
    _closers: list[Any] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(config: PlatformConfig | None = None, *, start_services: bool = True, **ray_init_kwargs: Any) -> Platform:
    """Connect to the platform, starting what is missing.

    Args:
        config: defaults to ``load_config()`` (``AIINFRA_CONFIG``, ``AIINFRA_HOME``, ``RAY_ADDRESS``, ...).
        start_services: create the platform actors if they are not running. With ``False``,
            a missing service is an error naming it.
        ray_init_kwargs: passed to ``ray.init`` when this call starts Ray.
    """
    config = config or load_config()
    use_cluster_auth(config)
    # Ray here, after use_cluster_auth: Ray reads RAY_AUTH_MODE once, when it is imported.
    import ray

    started = False
    initialized_here = False
    if not ray.is_initialized():
        # Join RAY_ADDRESS or a head that is running on this machine, else start a local one.
        # ("local", not None: with None, Ray would also try the last cluster it remembers in
        # /tmp/ray/ray_current_cluster, which may be long dead.)
        address = running_cluster(config) or "local"
        if address == "local":
            clear_stale_cluster_pointer()
            if config.serve.haproxy:  # read by Serve's controller, which inherits this environment
                os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
        ray.init(
            address=address,
            namespace=config.namespace,
            log_to_driver=ray_init_kwargs.pop("log_to_driver", False),
            **ray_init_kwargs,
        )
        initialized_here = True
        started = address == "local"
    require_shared_state(config)  # several nodes on one node's state: refuse, saying what to configure
    store = open_artifact_store(config.storage_root)

    if start_services and config.metadata_url.startswith("sqlite:"):
        # The embedded default's first start: an admin token for the HTTP API, in $AIINFRA_HOME/api_token.
        db = open_metadata_db(config.metadata_url)
        try:
            ensure_admin_token(TokenStore(db), config.token_file)
        finally:
            db.close()

    if start_services:  # up front, so `aiinfra status` and the dashboard show them from the start
        start_actor(REGISTRY, config)
        start_actor(FEATURE_STORE, config)
    ledger = DigestLedger.at(config.metadata_url)
    datasets = DatasetCatalog(store, ledger=ledger)
    platform = Platform(
        config=config,
        registry=RegistryClient.on_cluster(config, create=start_services, store=store),
        features=FeatureStoreClient.on_cluster(config, create=start_services, store=store, catalog=datasets),
        store=store,
        datasets=datasets,
        started_ray=started,
    )
    platform._closers.append(ledger.close)
    if initialized_here:
        # Disconnects this driver; a local cluster this call started stops with it.
        platform._closers.append(ray.shutdown)
    return platform


def open_local(config: PlatformConfig | None = None) -> Platform:
    """The platform's stores opened in this process, without Ray.

    For the CLI on a machine where no cluster runs (so no registry actor is writing): reads
    and writes go straight to the metadata DB, whose transactions keep them safe against
    other processes doing the same.
    """
    config = config or load_config()
    store = open_artifact_store(config.storage_root)
    db = open_metadata_db(config.metadata_url)
    datasets = DatasetCatalog(store, ledger=DigestLedger(db))
    platform = Platform(
        config=config,
        registry=RegistryClient(LocalBackend(ModelRegistry(db, store)), store),
        features=FeatureStoreClient(LocalBackend(OnlineStore(db)), store, catalog=datasets),
        store=store,
        datasets=datasets,
    )
    platform._closers.append(db.close)
    return platform
