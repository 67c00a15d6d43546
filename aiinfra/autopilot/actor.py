"""The named actor ``autopilot`` (namespace ``aiinfra``): the ``AutopilotExecutor`` on the cluster.

The actor hosts the executor with the cluster's ports (the ``registry`` actor's client, the models'
monitors, this cluster's job server) and its ticking thread on; ``aiinfra.service`` makes it an actor.
It restarts itself and reloads every stored policy and state (``executor.py`` says how it resumes).
"""

from __future__ import annotations

from typing import Any

from aiinfra.autopilot.executor import AutopilotExecutor
from aiinfra.autopilot.ports import ClusterJobs, ClusterMonitors
from aiinfra.config import PlatformConfig
from aiinfra.registry.client import RegistryClient
from aiinfra.service import ActorSpec, get_actor
from aiinfra.storage import open_artifact_store, open_metadata_db

__all__ = ["AUTOPILOT", "AUTOPILOT_ACTOR", "AutopilotActor", "get_autopilot_actor"]

AUTOPILOT_ACTOR = "autopilot"


class AutopilotActor(AutopilotExecutor):
    def __init__(self, config: PlatformConfig, poll_interval_s: float = 5.0) -> None:
        store = open_artifact_store(config.storage_root)
        super().__init__(open_metadata_db(config.metadata_url, create=False), store,
                         registry=RegistryClient.on_cluster(config, store=store, service="autopilot"),
                         monitors=ClusterMonitors(config), jobs=ClusterJobs(config), poll_interval_s=poll_interval_s)
        self.start()


# Calls wait on the executor's lock while a tick runs (a tick may wait on the job server or a monitor):
# more than one at a time keeps `status` answering.
AUTOPILOT = ActorSpec(AUTOPILOT_ACTOR, AutopilotActor, {"max_concurrency": 8})


def get_autopilot_actor(config: PlatformConfig, *, create: bool = True, poll_interval_s: float = 5.0) -> Any:
    """The ``autopilot`` actor, started first when ``create`` is set (ValueError when missing and not ``create``)."""
    return get_actor(AUTOPILOT, config, poll_interval_s, create=create)
