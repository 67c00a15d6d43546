"""The drift monitor of one served model as a service: what the ``monitor:<model>`` actor hosts.

A plain class (no Ray): the reference is the profile registered with the version the model's
``champion`` alias names (else its newest version), read when the service starts, so a restarted actor
reads it again; drift reports, performance estimates and concept-drift reports are stored in the
metadata DB before they are returned. A ticker thread closes time windows when traffic stops, checks
estimates against the labels that arrived, and checkpoints the predictions waiting for labels (and
the labels waiting for predictions) to the artifact store every ``CHECKPOINT_S``, so a restart loses
at most that much of them. Metrics go to an injected sink (``MonitorMetrics``): Ray's metrics in the
actor, none in tests.

For the autopilot it also keeps per-version canary arms (stored, at most ``ARMS_SAVE_S`` behind, so a
restart mid-canary resumes counting), the labelled production rows a retrain learns from, and
``rebase``: after a promotion the new champion's training data becomes the reference, so the drift it
was trained on stops counting as drift.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiinfra.config import PlatformConfig
from aiinfra.errors import NotFound
from aiinfra.monitoring.concept import ConceptDrift, ErrorStreamDetector
from aiinfra.monitoring.core import (
    DriftMonitor,
    DriftReport,
    EstimateCheck,
    estimation_error,
    load_arms,
    read_concept_drift,
    read_estimates,
    record_realised,
    save_arms,
    save_concept_drift,
)
from aiinfra.monitoring.estimation import PerformanceEstimator
from aiinfra.monitoring.performance import PerformanceTracker
from aiinfra.monitoring.reference import build_reference
from aiinfra.registry.core import ModelRegistry
from aiinfra.storage import ArtifactStore, MetadataDB, open_artifact_store, open_metadata_db

__all__ = ["MonitorMetrics", "MonitorService", "NoMetrics", "monitor_actor_name"]

log = logging.getLogger("aiinfra.monitoring")


ESTIMATE_WINDOWS = 20  # the latest windows whose estimates are checked against their labels


def monitor_actor_name(model: str) -> str:
    return f"monitor:{model}"


class MonitorMetrics(Protocol):
    """Where a monitor's figures go (Prometheus through Ray's metrics, in the actor)."""

    def windows(self, model: str, reports: Sequence[DriftReport]) -> None: ...

    def rows(self, model: str, n: int) -> None: ...

    def performance(self, model: str, metrics: dict[str, float]) -> None: ...

    def estimates(self, model: str, checks: Sequence[EstimateCheck]) -> None: ...

    def concept(self, model: str, reports: Sequence[ConceptDrift]) -> None: ...


class NoMetrics:
    def windows(self, model: str, reports: Sequence[DriftReport]) -> None:
        pass

    def rows(self, model: str, n: int) -> None:
        pass

    def performance(self, model: str, metrics: dict[str, float]) -> None:
        pass

    def estimates(self, model: str, checks: Sequence[EstimateCheck]) -> None:
        pass

    def concept(self, model: str, reports: Sequence[ConceptDrift]) -> None:
        pass


class MonitorService:
    """Args:
    config: the platform config (stores, ``monitoring:`` settings).
    model: the served model's registry name.
    metrics: the metrics sink; none by default.
    db, store: the metadata DB and artifact store; opened from ``config`` when not given.
    clock: monotonic seconds, for the arms' save throttle.
    ticker: start the thread that closes time windows (tests call ``tick`` themselves).
    """

    ARMS_SAVE_S = 1.0
    # The rolling metrics (ROC-AUC over the window) are computed when read, and for the gauges at most this
    # often: not on every /feedback call, which would cost milliseconds each under load.
    PERFORMANCE_METRICS_S = 1.0
    # Predictions waiting for labels (and labels waiting for predictions) are checkpointed to the artifact
    # store this often, when they changed: a restarted monitor takes them back, losing at most this much.
    CHECKPOINT_S = 10.0

    def __init__(self, config: PlatformConfig, model: str, *, metrics: MonitorMetrics | None = None,
                 db: MetadataDB | None = None, store: ArtifactStore | None = None,
                 clock: Callable[[], float] = time.monotonic, ticker: bool = True) -> None:
        self.config = config
        self._model = model
        self._store = store if store is not None else open_artifact_store(config.storage_root)
        self._db = db if db is not None else open_metadata_db(config.metadata_url, create=False)
        self._registry = ModelRegistry(self._db, self._store)  # reads only: the registry actor stays the one writer
        self._metrics: MonitorMetrics = metrics or NoMetrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._arms_saved: tuple[float, Any] = (float("-inf"), None)  # when, and what
        self._performance_at = float("-inf")  # when the performance gauges were last set
        self.performance: PerformanceTracker | None = None
        self._checkpointed = 0  # tracker.changes at the last checkpoint
        self._build()
        self.restored = self._restore()
        self._stop = threading.Event()
        window_s = config.monitoring.window_seconds
        if ticker:
            every = min(window_s / 4, self.CHECKPOINT_S) if window_s else self.CHECKPOINT_S
            threading.Thread(target=self._ticker, args=(every,), daemon=True, name=f"monitor-ticker-{model}").start()

    def _build(self) -> None:
        """Reference, detector and performance baseline from the champion (else the newest version)."""
        try:
            version = self._registry.get(f"{self._model}@champion")
        except NotFound:
            version = self._registry.get(self._model)
        reference = build_reference(self._store, version)
        predicted = None if reference.probabilities is None else reference.probabilities.argmax(axis=1)
        estimator = PerformanceEstimator(reference.task, reference.scores, reference.labels,
                                         reference_predicted=predicted, baseline=version.metrics)
        core = DriftMonitor(self._db, self._model, reference.frame, numeric=reference.numeric,
                            categorical=reference.categorical, settings=self.config.monitoring,
                            reference_scores=reference.scores, estimator=estimator)
        self.estimator = estimator
        # In memory: the rolling window and the labelled rows (a restart starts them afresh). Checkpointed:
        # predictions waiting for labels, labels waiting for predictions (at most CHECKPOINT_S behind).
        # Stored: the drift reports, estimates, concept drift, and the canary's arms (at most ARMS_SAVE_S behind).
        performance = PerformanceTracker(reference.task, reference.class_labels or [], version.metrics)
        if self.performance is not None:  # a rebase
            performance.carry_over(self.performance)
        else:
            stored = load_arms(self._db, self._model)
            if stored is not None:
                performance.restore_arms(stored)
        # The error stream of this champion: a new one (after a rebase) starts afresh.
        self.concept = ErrorStreamDetector(reference.task, baseline_rmse=version.metrics.get("rmse"))
        self.version, self.core, self.performance = version, core, performance
        self.reference_dataset = reference.source
        self.reference = reference

    def _save_arms(self, force: bool = False) -> None:
        """Store the arms when they changed, at most once per ARMS_SAVE_S (under the lock)."""
        stats = self.performance.arm_stats()
        at, saved = self._arms_saved
        now = self._clock()
        if stats != saved and (force or now - at >= self.ARMS_SAVE_S):
            save_arms(self._db, self._model, stats)
            self._arms_saved = (now, stats)

    def _ticker(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            for step in (self.tick, self.check_estimates, self.checkpoint):
                try:
                    step()
                except Exception:  # noqa: BLE001 - a failed step (the DB, the store away) is retried next time
                    log.warning("monitor %s: %s failed; retrying in %.0fs", self._model, step.__name__, every_s,
                                exc_info=True)

    @property
    def _checkpoint_key(self) -> str:
        # Gzipped JSON, but not named .gz: pyarrow's filesystems would decompress a .gz on reading.
        return f"monitoring/{self._model}/intake.checkpoint"

    def checkpoint(self) -> bool:
        """Store the predictions waiting for labels and the labels waiting for predictions, if they changed."""
        with self._lock:
            changes = self.performance.changes
            if changes == self._checkpointed:
                return False
            state = self.performance.export_state()
        body = json.dumps({"model": self._model, "saved_at": time.time(), **state}, default=str).encode()
        self._store.write_bytes(self._checkpoint_key, gzip.compress(body, compresslevel=1))
        self._checkpointed = changes
        return True

    def _restore(self) -> int:
        """Take back the last checkpoint (a restarted actor); the entries restored, 0 when there is none."""
        if not self._store.exists(self._checkpoint_key):
            return 0
        try:
            state = json.loads(gzip.decompress(self._store.read_bytes(self._checkpoint_key)))
            n = self.performance.import_state(state)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("monitor %s: its intake checkpoint could not be read (%s); starting without it", self._model, e)
            return 0
        self._checkpointed = self.performance.changes
        return n

    def check_estimates(self, limit: int = ESTIMATE_WINDOWS) -> list[EstimateCheck]:
        """Set each recent window's estimate beside what the labels that arrived since show (stored)."""
        with self._lock:
            checks = read_estimates(self._db, self._model, limit)
            out = []
            for check in checks:
                if check.labelled >= check.rows:  # every row labelled: nothing more can arrive for it
                    out.append(check)
                    continue
                seen = self.performance.realised_between(check.window_start, check.window_end)
                if seen["labelled"] and seen["labelled"] != check.labelled:
                    record_realised(self._db, self._model, check.window_id, seen["labelled"], seen["metrics"])
                    error = {k: abs(check.estimate.metrics[k].value - v) for k, v in seen["metrics"].items()
                             if k in check.estimate.metrics}
                    check = check.model_copy(update={"labelled": seen["labelled"], "realised": seen["metrics"],
                                                     "error": error})
                out.append(check)
        self._metrics.estimates(self._model, out)
        return out

    def close(self) -> None:
        self._stop.set()
        self.checkpoint()

    # -- the API ---------------------------------------------------------------------------------
    def rebase(self) -> dict[str, Any]:
        """Take the current champion as the reference (after a promotion); the open window is dropped."""
        with self._lock:
            self._build()
        return {"version": self.version.ref, "reference": self.reference_dataset}

    def tick(self) -> dict[str, Any] | None:
        """Close the open window if its time is up; the report, if one closed."""
        with self._lock:
            report = self.core.tick()
        if report is None:
            return None
        self._metrics.windows(self._model, [report])
        return report.model_dump(mode="json")

    def observe(self, rows: list[dict[str, Any]], scores: list[float] | None = None,
                request_ids: list[str] | None = None, labels: list[Any] | None = None,
                versions: list[int | None] | None = None, errors: dict[int, int] | None = None,
                tokens: list[str | None] | None = None) -> list[dict[str, Any]]:
        """Rows served (with scores, request ids, predicted labels, the version that answered each and the API
        token each request was made with), and failed requests per version; returns the windows this closed."""
        at = time.time()  # one arrival time for both sides: a window's span finds its rows' labels by it
        with self._lock:
            reports = self.core.observe(rows, scores, at=at, tokens=tokens) if rows else []
            if request_ids is not None and scores is not None:
                self.performance.record(request_ids, scores, labels, versions=versions, rows=rows, served_at=at,
                                        tokens=tokens)
            if errors:
                self.performance.record_errors(errors)
            concept = self._error_stream()  # labels that were held for these predictions joined just now
            self._save_arms()
        self._metrics.rows(self._model, len(rows))
        self._metrics.windows(self._model, reports)
        self._metrics.concept(self._model, concept)
        return [r.model_dump(mode="json") for r in reports]

    def feedback(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Ground truth for served requests; unknown request ids are counted and ignored.

        Returns the counts, each item's outcome in order (``outcomes``: matched, unknown or invalid), and any
        concept drift the new labels revealed (stored before it is returned).
        """
        with self._lock:
            outcomes = self.performance.judge(items)
            counts = {k: outcomes.count(k) for k in ("matched", "unknown", "invalid", "refused")}
            concept = self._error_stream()
            self._save_arms()
            now = self._clock()
            snap = None
            if now - self._performance_at >= self.PERFORMANCE_METRICS_S:
                snap, self._performance_at = self.performance.snapshot(), now
        if snap is not None:
            self._metrics.performance(self._model, snap["metrics"])
        self._metrics.concept(self._model, concept)
        return {**counts, "outcomes": outcomes, "concept_drift": [c.model_dump(mode="json") for c in concept]}

    def _error_stream(self) -> list[ConceptDrift]:
        """Feed the rows joined since the last call to the error-stream detector; store what it finds (under the lock)."""
        errors = self.performance.drain_errors()
        if not errors:
            return []
        found = self.concept.update(self.concept.error_of(correct, abs_error) for correct, abs_error in errors)
        return [save_concept_drift(self._db, self._model, d, metric=self.concept.metric) for d in found]

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
        """The most recent labelled production rows: features, label, served_at, version, labelled_by; at most
        ``monitoring.max_token_share`` of them labelled by any one token."""
        with self._lock:
            return self.performance.labelled_rows(limit, max_share=self.config.monitoring.max_token_share)

    def performance_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"version": self.version.version, **self.performance.snapshot()}

    def flush(self) -> dict[str, Any] | None:
        """Close the open window now, whatever its size; the report, if there were rows."""
        with self._lock:
            report = self.core.flush()
        if report is None:
            return None
        self._metrics.windows(self._model, [report])
        return report.model_dump(mode="json")

    def status(self, limit: int = 10) -> dict[str, Any]:
        checks = self.check_estimates()
        with self._lock:
            stats = self.core.stats()
            reports = self.core.reports(limit=limit)
        return {"model": self.core.model, "version": self.version.ref, "reference": self.reference_dataset,
                "features": self.core.features, "detector": self.core.detector,
                "settings": self.core.settings.model_dump(), "stats": stats,
                "performance": self.performance.snapshot(),
                "estimation": {**self._estimation(), "error": estimation_error(checks),
                               "windows": [c.model_dump(mode="json") for c in checks[:limit]]},
                "concept": {"detector": "adwin", "delta": self.concept.delta, "metric": self.concept.metric,
                            "rows": self.concept.rows,
                            "reports": [c.model_dump(mode="json") for c in read_concept_drift(self._db, self._model, limit)]},
                "reports": [r.model_dump(mode="json") for r in reports]}

    def _estimation(self) -> dict[str, Any]:
        e = self.estimator
        return {"method": "cbpe", "available": e.available, "reliable": e.available and not e.problem,
                "calibration_error": e.calibration_error, "raw_calibration_error": e.raw_calibration_error,
                "problem": e.problem}
