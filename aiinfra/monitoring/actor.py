"""One drift monitor per served model: the named actor ``monitor:<model>`` in namespace ``aiinfra``.

A thin Ray shell around ``DriftMonitor``. Its reference is built from the version the model's
``champion`` alias names (else its newest version) when the actor starts; reports are stored in
the metadata DB before they are returned, so a restart (``max_restarts=-1``) loses none of them.
A timer thread closes time windows when traffic stops; metrics go out through ray.util.metrics.

For the autopilot it also keeps per-version canary arms (stored in the metadata DB, so a restart
mid-canary resumes counting), the labelled production rows a retrain
learns from, and ``rebase``: after a promotion the new champion's training data becomes the
reference, so the drift it was trained on stops counting as drift.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray

from aiinfra.config import PlatformConfig

__all__ = ["MonitorService", "get_monitor_actor", "monitor_actor_name"]


def monitor_actor_name(model: str) -> str:
    return f"monitor:{model}"


class MonitorService:
    def __init__(self, config: PlatformConfig, model: str) -> None:
        from ray.util.metrics import Counter, Gauge

        from aiinfra.registry.core import ModelRegistry
        from aiinfra.storage import open_artifact_store, open_metadata_db

        self._store = open_artifact_store(config.storage_root)
        self._db = open_metadata_db(config.metadata_url)
        self._registry = ModelRegistry(self._db, self._store)  # read-only use: the registry actor stays the one writer
        self.config = config
        self._model = model
        self._lock = threading.Lock()
        self._arms_saved: tuple[float, Any] = (0.0, None)  # when, and what
        self._build()
        settings = self.core.settings
        self._m_perf = Gauge("aiinfra_performance", "rolling metric on labelled production traffic",
                             tag_keys=("model", "metric"))
        tags = ("model",)
        self._m_windows = Counter("aiinfra_monitor_windows", "closed drift windows by status", tag_keys=("model", "status"))
        self._m_share = Gauge("aiinfra_drift_share", "share of features drifted in the latest window", tag_keys=tags)
        self._m_stat = Gauge("aiinfra_drift_statistic", "per-feature drift statistic of the latest window",
                             tag_keys=("model", "feature"))
        self._m_psi = Gauge("aiinfra_drift_psi", "per-feature PSI of the latest window", tag_keys=("model", "feature"))
        self._m_rows = Counter("aiinfra_monitor_rows", "served rows received by the monitor", tag_keys=tags)
        self._stop = threading.Event()
        if settings.window_seconds:
            threading.Thread(target=self._ticker, args=(min(settings.window_seconds / 4, 30.0),), daemon=True).start()

    def _build(self) -> None:
        """Reference, detector and performance baseline from the champion (else the newest version)."""
        from aiinfra.errors import NotFound
        from aiinfra.monitoring.core import DriftMonitor, load_arms
        from aiinfra.monitoring.performance import PerformanceTracker
        from aiinfra.monitoring.reference import build_reference

        try:
            version = self._registry.get(f"{self._model}@champion")
        except NotFound:
            version = self._registry.get(self._model)
        reference = build_reference(self._store, version)
        core = DriftMonitor(self._db, self._model, reference.frame, numeric=reference.numeric,
                            categorical=reference.categorical, settings=self.config.monitoring,
                            reference_scores=reference.scores)
        # In memory: predictions waiting for labels, the rolling window and the labelled rows (a restart
        # starts them afresh). Stored: the drift reports, and the canary's arms (at most ARMS_SAVE_S behind).
        performance = PerformanceTracker(reference.task, reference.class_labels or [], version.metrics)
        old = getattr(self, "performance", None)
        if old is not None:  # a rebase
            performance.carry_over(old)
        else:
            stored = load_arms(self._db, self._model)
            if stored is not None:
                performance.restore_arms(stored)
        self.version, self.core, self.performance = version, core, performance
        self.reference_dataset = reference.dataset_version

    ARMS_SAVE_S = 1.0

    def _save_arms(self, force: bool = False) -> None:
        """Store the arms when they changed, at most once per ARMS_SAVE_S (under the lock)."""
        from aiinfra.monitoring.core import save_arms

        stats = self.performance.arm_stats()
        at, saved = self._arms_saved
        if stats != saved and (force or time.monotonic() - at >= self.ARMS_SAVE_S):
            save_arms(self._db, self._model, stats)
            self._arms_saved = (time.monotonic(), stats)

    def rebase(self) -> dict[str, Any]:
        """Take the current champion as the reference (after a promotion); the open window is dropped."""
        with self._lock:
            self._build()
        return {"version": self.version.ref, "reference": self.reference_dataset}

    def _export(self, reports: list[Any]) -> None:
        for r in reports:
            self._m_windows.inc(1, tags={"model": self.core.model, "status": r.status})
            if r.result is None:
                continue
            self._m_share.set(r.result.share_drifted, tags={"model": self.core.model})
            for f in r.result.features:
                self._m_stat.set(f.statistic, tags={"model": self.core.model, "feature": f.feature})
                if f.psi is not None:
                    self._m_psi.set(f.psi, tags={"model": self.core.model, "feature": f.feature})

    def _ticker(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            with self._lock:
                report = self.core.tick()
            if report is not None:
                self._export([report])

    def observe(self, rows: list[dict[str, Any]], scores: list[float] | None = None,
                request_ids: list[str] | None = None, labels: list[Any] | None = None,
                versions: list[int | None] | None = None, errors: dict[int, int] | None = None) -> list[dict[str, Any]]:
        """Rows served (with scores, request ids, predicted labels and the version that answered each),
        and failed requests per version; returns the windows this closed, as stored."""
        with self._lock:
            reports = self.core.observe(rows, scores) if rows else []
            if request_ids is not None and scores is not None:
                self.performance.record(request_ids, scores, labels, versions=versions, rows=rows)
            if errors:
                self.performance.record_errors(errors)
            self._save_arms()
        self._m_rows.inc(len(rows), tags={"model": self.core.model})
        self._export(reports)
        return [r.model_dump(mode="json") for r in reports]

    def feedback(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Ground truth for served requests; unknown request ids are counted and ignored."""
        with self._lock:
            counts = self.performance.feedback(items)
            snap = self.performance.snapshot()
            self._save_arms()
        for metric, value in snap["metrics"].items():
            self._m_perf.set(value, tags={"model": self.core.model, "metric": metric})
        return {**counts, "performance": snap}

    def arm_stats(self) -> dict[str, Any]:
        """Requests, errors, labelled and correct rows per served version since ``reset_arms``."""
        with self._lock:
            self._save_arms(force=True)  # what the autopilot decides on is what a restart resumes from
            return self.performance.arm_stats()

    def reset_arms(self) -> dict[str, Any]:
        with self._lock:
            self.performance.reset_arms()
            self._save_arms(force=True)
            return self.performance.arm_stats()

    def labelled_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The most recent labelled production rows: features, label, served_at, version."""
        with self._lock:
            return self.performance.labelled_rows(limit)

    def performance_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"version": self.version.version, **self.performance.snapshot()}

    def flush(self) -> dict[str, Any] | None:
        with self._lock:
            report = self.core.flush()
        if report is not None:
            self._export([report])
        return None if report is None else report.model_dump(mode="json")

    def status(self, limit: int = 10) -> dict[str, Any]:
        with self._lock:
            stats = self.core.stats()
            reports = self.core.reports(limit=limit)
        return {"model": self.core.model, "version": self.version.ref, "reference": self.reference_dataset,
                "features": {"numeric": self.core._detector.numeric, "categorical": self.core._detector.categorical},
                "settings": self.core.settings.model_dump(), "stats": stats,
                "performance": self.performance.snapshot(),
                "reports": [r.model_dump(mode="json") for r in reports]}

    def pid(self) -> int:
        return os.getpid()


def get_monitor_actor(config: PlatformConfig, model: str, *, create: bool = True) -> ray.actor.ActorHandle:
    name = monitor_actor_name(model)
    if not create:
        return ray.get_actor(name, namespace=config.namespace)
    return (
        ray.remote(MonitorService)
        .options(name=name, namespace=config.namespace, lifetime="detached", get_if_exists=True,
                 num_cpus=0, max_restarts=-1, max_task_retries=0)
        .remote(config, model)
    )
