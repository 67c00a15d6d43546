"""The typed client of a model's drift monitor (the ``monitor:<model>`` actor, or a ``MonitorService`` in-process)."""

from __future__ import annotations

from typing import Any

from aiinfra.config import PlatformConfig
from aiinfra.monitoring.actor import monitor_spec
from aiinfra.service import LocalBackend, ServiceBackend, actor_backend, find_actor

__all__ = ["MonitorClient"]


class MonitorClient:
    """What the router, the autopilot, the retrain job and the CLI ask of a model's monitor."""

    def __init__(self, backend: ServiceBackend, model: str) -> None:
        self._backend = backend
        self.model = model

    @classmethod
    def for_model(cls, config: PlatformConfig, model: str, *, create: bool = True) -> MonitorClient:
        """The client of ``monitor:<model>``; with ``create`` the first call starts the monitor if it is not running."""
        return cls(actor_backend(monitor_spec(model), config, model, create=create), model)

    @classmethod
    def if_running(cls, config: PlatformConfig, model: str) -> MonitorClient | None:
        """The client of the model's monitor if its actor runs now, else None (nothing is started)."""
        if find_actor(monitor_spec(model), config) is None:
            return None
        return cls.for_model(config, model, create=False)

    @classmethod
    def in_process(cls, service: Any) -> MonitorClient:
        """Over a ``MonitorService`` in this process (tests)."""
        return cls(LocalBackend(service), service.core.model)

    def observe(self, rows: list[dict[str, Any]], scores: list[float] | None = None,
                request_ids: list[str] | None = None, labels: list[Any] | None = None,
                versions: list[int | None] | None = None, errors: dict[int, int] | None = None,
                tokens: list[str | None] | None = None) -> list[dict[str, Any]]:
        """Served rows (and failed requests per version, and each request's API token id); the drift windows closed."""
        return self._backend.call("observe", rows, scores, request_ids, labels, versions, errors, tokens)

    def feedback(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Labels by request id: counts (matched, unknown, invalid, refused), each item's ``outcomes``, and the
        ``concept_drift`` the labels revealed."""
        return self._backend.call("feedback", items)

    def arm_stats(self) -> dict[str, Any]:
        return self._backend.call("arm_stats")

    def reset_arms(self) -> dict[str, Any]:
        return self._backend.call("reset_arms")

    def rebase(self) -> dict[str, Any]:
        return self._backend.call("rebase")

    def labelled_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self._backend.call("labelled_rows", limit)

    def performance_snapshot(self) -> dict[str, Any]:
        return self._backend.call("performance_snapshot")

    def flush(self) -> dict[str, Any] | None:
        return self._backend.call("flush")

    def check_estimates(self, limit: int = 20) -> list[Any]:
        """Each recent window's estimate beside what its labels show now (stored as well)."""
        return self._backend.call("check_estimates", limit)

    def status(self, limit: int = 10) -> dict[str, Any]:
        return self._backend.call("status", limit)

    def pid(self) -> int:
        return self._backend.call("pid")
