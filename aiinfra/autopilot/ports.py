"""What the autopilot's executor acts on, as small ports: the model registry, the models' monitors, the job server.

The executor (``executor.py``) takes these as arguments, so its decisions' effects are unit-tested with
fakes; ``ClusterMonitors`` and ``ClusterJobs`` are the real ones, over the monitor actors' client and
``aiinfra.jobs``.
"""

from __future__ import annotations

from contextlib import closing
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
    def submit(self, entrypoint: str, *, submission_id: str, metadata: dict[str, str],
               entrypoint_memory: int | None = None) -> str: ...

    def retrain_memory(self, retrain: Any) -> int | None:
        """The memory a retrain job's driver asks for (``aiinfra.training.budgets``), None to ask for none.

        Raises:
            InvalidInput: no node of the cluster could hold its driver (or it is past jobs.entrypoint_memory_bytes).
        """

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

    def submit(self, entrypoint: str, *, submission_id: str, metadata: dict[str, str],
               entrypoint_memory: int | None = None) -> str:
        return jobs.submit(self.config, entrypoint, name="retrain", submission_id=submission_id, metadata=metadata,
                           entrypoint_memory=entrypoint_memory)

    def retrain_memory(self, retrain: Any) -> int | None:
        """The retrain's driver estimate from the dataset's manifest (what ``aiinfra retrain`` checks again when it
        starts), asked for as ``entrypoint_memory`` so Ray starts the driver on a node with that much memory left.
        None where it cannot be estimated here (the config or the manifests unreadable from this node, a feature
        source other than the dataset itself) or a budget is configured (the job then asks for that)."""
        from aiinfra.data.catalog import DatasetCatalog
        from aiinfra.storage import DigestLedger, open_artifact_store
        from aiinfra.training.budgets import (
            check_driver_budget,
            driver_memory_request,
            retrain_driver_estimate,
            use_ray_engine,
        )
        from aiinfra.training.config import load_train_config

        try:
            cfg = load_train_config(retrain.training_config)
            with closing(DigestLedger.at(self.config.metadata_url)) as ledger:
                base = DatasetCatalog(open_artifact_store(self.config.storage_root), ledger=ledger).get(cfg.data.dataset)
        except Exception:  # noqa: BLE001 - advice for the request: the job itself reads (and refuses) them again
            return None
        view = cfg.data.feature_view
        if view is not None and getattr(view, "source", None) != base.name:
            return None  # a registered view's source, or another dataset: not known here without the feature store
        estimate = retrain_driver_estimate(cfg, base, recent_rows=retrain.recent_rows,
                                           reference_rows=retrain.reference_rows,
                                           engine="ray" if use_ray_engine(cfg.data.engine, base) else "memory")
        what = f"the retrain of {cfg.name} on {base.ref}"
        check_driver_budget(estimate, self.config.jobs.entrypoint_memory_bytes, what)
        return driver_memory_request(estimate, self.config.jobs.entrypoint_memory_bytes, jobs.node_memory(self.config),
                                     what)

    def state(self, job_id: str) -> JobState:
        return jobs.job_state(self.config, job_id)

    def logs(self, job_id: str) -> str:
        return jobs.job_logs(self.config, job_id)
