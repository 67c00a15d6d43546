"""What the autopilot's executor acts on, as small ports: the model registry, the models' monitors, the job server.

The executor (``executor.py``) takes these as arguments, so its decisions' effects are unit-tested with
fakes; ``ClusterMonitors`` and ``ClusterJobs`` are the real ones, over the monitor actors' client and
``aiinfra.jobs``.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiinfra import jobs
from aiinfra.config import PlatformConfig
from aiinfra.jobs import JobState
from aiinfra.monitoring.client import MonitorClient
from aiinfra.registry.types import ModelVersion

__all__ = ["Aliases", "ClusterJobs", "ClusterMonitors", "Jobs", "Monitors"]


class Aliases(Protocol):
    """The registry calls the autopilot makes (``RegistryClient`` has them)."""

    def get(self, ref: str) -> ModelVersion: ...

    def set_alias(self, name: str, version: int, alias: str, *, share: float | None = None) -> ModelVersion: ...

    def remove_alias(self, name: str, alias: str) -> None: ...

    def alias_or_request(self, name: str, version: int, alias: str, *, reason: str = "") -> Any:
        """Move the alias, or (a protected one) request the move: an ``AliasRequest`` then."""

    def get_request(self, request_id: str) -> Any:
        """The registry's ``AliasRequest``: its status (pending, applied, refused, expired) and who decided."""


class Monitors(Protocol):
    def performance_snapshot(self, model: str) -> dict[str, Any] | None:
        """The rolling performance on labelled traffic; None when no monitor runs for the model."""

    def arm_stats(self, model: str) -> dict[str, Any]:
        """Per-version canary counters (the monitor is started if it is not running)."""

    def reset_arms(self, model: str) -> None: ...

    def rebase(self, model: str) -> None:
        """Take the current champion as the reference; nothing when no monitor runs."""


class Jobs(Protocol):
    def submit(self, entrypoint: str, *, submission_id: str, metadata: dict[str, str]) -> str: ...

    def state(self, job_id: str) -> JobState: ...

    def logs(self, job_id: str) -> str: ...


class ClusterMonitors:
    """The ``monitor:<model>`` actors, through their client."""

    def __init__(self, config: PlatformConfig) -> None:
        self.config = config

    def performance_snapshot(self, model: str) -> dict[str, Any] | None:
        monitor = MonitorClient.if_running(self.config, model)
        return None if monitor is None else monitor.performance_snapshot()

    def arm_stats(self, model: str) -> dict[str, Any]:
        return MonitorClient.for_model(self.config, model).arm_stats()

    def reset_arms(self, model: str) -> None:
        MonitorClient.for_model(self.config, model).reset_arms()

    def rebase(self, model: str) -> None:
        monitor = MonitorClient.if_running(self.config, model)
        if monitor is not None:
            monitor.rebase()


class ClusterJobs:
    """This cluster's job server (``aiinfra.jobs``), with the autopilot's config shipped to every job."""

    def __init__(self, config: PlatformConfig) -> None:
        self.config = config

    def submit(self, entrypoint: str, *, submission_id: str, metadata: dict[str, str]) -> str:
        return jobs.submit(self.config, entrypoint, name="retrain", submission_id=submission_id, metadata=metadata)

    def state(self, job_id: str) -> JobState:
        return jobs.job_state(self.config, job_id)

    def logs(self, job_id: str) -> str:
        return jobs.job_logs(self.config, job_id)
