"""The typed client of the autopilot (the ``autopilot`` actor, or an ``AutopilotExecutor`` in-process)."""

from __future__ import annotations

from typing import Any

from aiinfra.autopilot.actor import AUTOPILOT
from aiinfra.autopilot.policy import AutopilotPolicy
from aiinfra.config import PlatformConfig
from aiinfra.service import LocalBackend, ServiceBackend, actor_backend, find_actor

__all__ = ["AutopilotClient"]


class AutopilotClient:
    def __init__(self, backend: ServiceBackend) -> None:
        self._backend = backend

    @classmethod
    def on_cluster(cls, config: PlatformConfig, *, create: bool = False, poll_interval_s: float = 5.0) -> AutopilotClient:
        """The client of the ``autopilot`` actor (started on first use when ``create``)."""
        return cls(actor_backend(AUTOPILOT, config, poll_interval_s, create=create))

    @classmethod
    def if_running(cls, config: PlatformConfig) -> AutopilotClient | None:
        return cls.on_cluster(config) if find_actor(AUTOPILOT, config) is not None else None

    @classmethod
    def in_process(cls, executor: Any) -> AutopilotClient:
        return cls(LocalBackend(executor))

    def watch(self, policy: AutopilotPolicy) -> dict[str, Any]:
        """Drive ``policy.model`` by ``policy`` from now on; its state."""
        return self._backend.call("watch", policy.model_dump(mode="json"))

    def unwatch(self, model: str) -> bool:
        return self._backend.call("unwatch", model)

    def status(self, model: str | None = None, limit: int = 20) -> dict[str, Any]:
        return self._backend.call("status", model, limit)

    def tick(self) -> list[dict[str, Any]]:
        return self._backend.call("tick")

    def pid(self) -> int:
        return self._backend.call("pid")
