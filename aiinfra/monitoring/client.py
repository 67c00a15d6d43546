"""The typed client of a model's drift monitor (the ``monitor:<model>`` actor, or a ``MonitorService`` in-process)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiinfra.config import PlatformConfig
from aiinfra.monitoring.actor import monitor_spec
from aiinfra.monitoring.shards import split_feedback, split_observe
from aiinfra.service import LocalBackend, ServiceBackend, actor_backend, find_actor

__all__ = ["MonitorClient"]


class MonitorClient:
    """What the router, the autopilot, the retrain job and the CLI ask of a model's monitor."""

    def __init__(self, backend: ServiceBackend, model: str, shards: Sequence[ServiceBackend] = ()) -> None:
        """``backend``: the monitor (its shard 0); ``shards``: the later shards, when it has any
        (``monitoring.shards``): ``observe`` and ``feedback`` are split among them, the rest asks shard 0."""
        self._backend = backend
        self._shards = [backend, *shards]
        self.model = model

    @classmethod
    def for_model(cls, config: PlatformConfig, model: str, *, create: bool = True) -> MonitorClient:
        """The client of ``monitor:<model>`` (and its shards); with ``create`` the first call starts each if it is
        not running."""
        shards = [actor_backend(monitor_spec(model, k), config, model, k, create=create)
                  for k in range(1, config.monitoring.shards)]
        return cls(actor_backend(monitor_spec(model), config, model, create=create), model, shards)

    @classmethod
    def if_running(cls, config: PlatformConfig, model: str) -> MonitorClient | None:
        """The client of the model's monitor if its actor runs now, else None (nothing is started)."""
        if find_actor(monitor_spec(model), config) is None:
            return None
        return cls.for_model(config, model, create=False)

    @classmethod
    def in_process(cls, service: Any, shards: Sequence[Any] = ()) -> MonitorClient:
        """Over a ``MonitorService`` in this process, and its later shards' (tests)."""
        return cls(LocalBackend(service), service.core.model, [LocalBackend(s) for s in shards])

    def observe(self, rows: list[dict[str, Any]], scores: list[float] | None = None,
                request_ids: list[str] | None = None, labels: list[Any] | None = None,
                versions: list[int | None] | None = None, errors: dict[int, int] | None = None,
                tokens: list[str | None] | None = None, *, probabilities: Any = None) -> list[dict[str, Any]]:
        """Served rows (and failed requests per version, and each request's API token id; a multiclass model's
        every class's probability per row); the drift windows closed."""
        extra = {} if probabilities is None else {"probabilities": probabilities}
        if len(self._shards) == 1:
            return self._backend.call("observe", rows, scores, request_ids, labels, versions, errors, tokens, **extra)
        reports: list[dict[str, Any]] = []
        at = time.time()  # one arrival time on every shard: shard 0's windows find the other shards' labels by it
        for k, args in split_observe(len(self._shards), rows, scores, request_ids, labels, versions, errors, tokens):
            # Shard 0 cuts the windows from every row: the probabilities are its alone.
            reports.extend(self._shards[k].call("observe", *args, at=at, **(extra if k == 0 else {})))
        return reports

    def feedback(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Labels by request id: counts (matched, unknown, invalid, refused), each item's ``outcomes``, and the
        ``concept_drift`` the labels revealed."""
        if len(self._shards) == 1:
            return self._backend.call("feedback", items)
        return split_feedback(len(self._shards), items, lambda k, part: self._shards[k].call("feedback", part))

    def absorb(self, handoff: dict[str, Any]) -> dict[str, Any]:
        """Shard 0 takes a later shard's joins (what ``MonitorService.hand_off`` sends)."""
        return self._backend.call("absorb", handoff)

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
