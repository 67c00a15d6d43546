"""One drift monitor per served model: the named actor ``monitor:<model>`` in namespace ``aiinfra``.

The actor hosts ``MonitorService`` (monitoring/service.py) with Ray's metrics as its sink;
``aiinfra.service`` makes it an actor. It restarts itself (``max_restarts=-1``) and rebuilds its
reference from the registry, with its reports and canary arms read back from the metadata DB.
"""

from __future__ import annotations

from typing import Any

from aiinfra.config import PlatformConfig
from aiinfra.monitoring.service import MonitorService, monitor_actor_name
from aiinfra.service import ActorSpec, get_actor

__all__ = ["MonitorActor", "get_monitor_actor", "monitor_actor_name", "monitor_spec"]


class MonitorActor(MonitorService):
    """The monitor as its actor runs it: Ray's metrics, the ticker thread on."""

    def __init__(self, config: PlatformConfig, model: str, shard: int = 0) -> None:
        # Here, not at the top: the client imports this module, and importing a client must not load Ray
        # (aiinfra.service says why).
        from aiinfra.monitoring.metrics import RayMonitorMetrics

        super().__init__(config, model, metrics=RayMonitorMetrics(), shard=shard)


def monitor_spec(model: str, shard: int = 0) -> ActorSpec:
    """The spec of the model's monitor (``shard`` k of ``monitoring.shards``: the actor ``monitor:<model>#k``)."""
    return ActorSpec(monitor_actor_name(model, shard), MonitorActor)


def get_monitor_actor(config: PlatformConfig, model: str, *, create: bool = True) -> Any:
    """The model's monitor actor, started first when ``create`` is set (ValueError when missing and not ``create``)."""
    return get_actor(monitor_spec(model), config, model, create=create)
