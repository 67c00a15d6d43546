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
from aiinfra.data.catalog import DatasetCatalog
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
from aiinfra.monitoring.performance import OUTCOMES, PerformanceTracker, judged_arms
from aiinfra.monitoring.reference import build_reference
from aiinfra.monitoring.shards import HANDOFF_S
from aiinfra.registry.core import ModelRegistry
from aiinfra.storage import ArtifactStore, DigestLedger, MetadataDB, open_artifact_store, open_metadata_db

__all__ = ["MonitorMetrics", "MonitorService", "NoMetrics", "monitor_actor_name"]

log = logging.getLogger("aiinfra.monitoring")


ESTIMATE_WINDOWS = 20  # the latest windows whose estimates are checked against their labels


def monitor_actor_name(model: str, shard: int = 0) -> str:
    """``monitor:<model>``, and ``monitor:<model>#<k>`` for the shards after the first (monitoring.shards)."""
    return f"monitor:{model}" if shard == 0 else f"monitor:{model}#{shard}"


class MonitorMetrics(Protocol):
    """Where a monitor's figures go (Prometheus through Ray's metrics, in the actor)."""

    def windows(self, model: str, reports: Sequence[DriftReport]) -> None: ...

    def rows(self, model: str, n: int) -> None: ...

    def performance(self, model: str, metrics: dict[str, float]) -> None: ...

    def estimates(self, model: str, checks: Sequence[EstimateCheck]) -> None: ...

    def concept(self, model: str, reports: Sequence[ConceptDrift]) -> None: ...

    def refused(self, model: str, what: str, n: int) -> None: ...


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

    def refused(self, model: str, what: str, n: int) -> None:
        pass


class MonitorService:
    """Args:
    config: the platform config (stores, ``monitoring:`` settings).
    model: the served model's registry name.
    metrics: the metrics sink; none by default.
    db, store: the metadata DB and artifact store; opened from ``config`` when not given.
    clock: monotonic seconds, for the arms' save throttle.
    ticker: start the thread that closes time windows (tests call ``tick`` themselves).
    shard: which of ``monitoring.shards`` this is (aiinfra.monitoring.shards). Shard 0 is the monitor as
        callers know it; a later shard only joins its requests' predictions and labels, and hands what the
        joins produce to shard 0 (``hand_off``, every ``HANDOFF_S`` on the ticker).
    peer: how a later shard reaches shard 0's ``absorb`` (default: its actor, through MonitorClient).
    """

    # A commit per save: at thousands of labels a second the arms change on every call, and a save a second was
    # about 3% of the monitor's time. The autopilot's own read (arm_stats) saves them first, whatever the age.
    ARMS_SAVE_S = 5.0
    # The rolling metrics (ROC-AUC over the window) are computed when read, and for the gauges at most this
    # often: not on every /feedback call, which would cost milliseconds each under load.
    PERFORMANCE_METRICS_S = 1.0
    # Predictions waiting for labels (and labels waiting for predictions) are checkpointed to the artifact
    # store this often, when they changed: a restarted monitor takes them back, losing at most this much.
    CHECKPOINT_S = 10.0
    # ... or less often: a checkpoint writes every pending prediction (with its feature rows), so with many
    # pending it is spaced out to cost at most this share of the monitor's time (100,000 pending requests of
    # 10 rows took about a second here), and a restart loses correspondingly more.
    CHECKPOINT_SHARE = 0.01
    # The first checkpoint too: one estimated (from the bytes pending, at the last one's cost per byte) to
    # cost more than CHECKPOINT_CHEAP_S waits until that cost is at most CHECKPOINT_SHARE of the time since
    # the monitor started. A prior per byte until one is measured (JSON and gzip here: about 5 ns a byte).
    CHECKPOINT_CHEAP_S = 0.05
    CHECKPOINT_S_PER_BYTE = 5e-9

    def __init__(self, config: PlatformConfig, model: str, *, metrics: MonitorMetrics | None = None,
                 db: MetadataDB | None = None, store: ArtifactStore | None = None,
                 clock: Callable[[], float] = time.monotonic, ticker: bool = True, shard: int = 0,
                 peer: Callable[[dict[str, Any]], Any] | None = None) -> None:
        if not 0 <= shard < config.monitoring.shards:
            raise ValueError(f"shard {shard} of a monitor with monitoring.shards {config.monitoring.shards}")
        self.config = config
        self._model = model
        self.shard = shard
        self._peer = peer
        self._unsent: list[dict[str, Any]] = []  # handoffs shard 0 did not take yet (it was away)
        self.handoffs = {"sent": 0, "failed": 0, "dropped": 0}
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
        self._checkpoint_due = 0.0  # monotonic time before which the ticker does not checkpoint again
        self._checkpoint_at = time.monotonic()  # the last checkpoint's start (the monitor's, before the first)
        self._checkpoint_s_per_byte = self.CHECKPOINT_S_PER_BYTE
        self._build()
        self.restored = self._restore()
        self._stop = threading.Event()
        window_s, min_s = config.monitoring.window_seconds, config.monitoring.min_window_seconds
        if ticker:
            # Windows are closed by time at a quarter of window_seconds, and a full window waiting out
            # min_window_seconds at least that often; estimates and the checkpoint every CHECKPOINT_S.
            slow = min(window_s / 4, self.CHECKPOINT_S) if window_s else self.CHECKPOINT_S
            every = min(slow, max(min_s / 2, 0.25)) if min_s > 0 else slow
            if shard:
                every = min(every, HANDOFF_S)
            threading.Thread(target=self._ticker, args=(every, slow), daemon=True, name=f"monitor-ticker-{model}").start()

    def _build(self) -> None:
        """Reference, detector and performance baseline from the champion (else the newest version)."""
        try:
            version = self._registry.get(f"{self._model}@champion")
        except NotFound:
            version = self._registry.get(self._model)
        datasets = DatasetCatalog(self._store, ledger=DigestLedger(self._db))
        reference = build_reference(self._store, version, datasets=datasets)
        predicted = None if reference.probabilities is None else reference.probabilities.argmax(axis=1)
        estimator = PerformanceEstimator(reference.task, reference.scores, reference.labels,
                                         reference_predicted=predicted, reference_probabilities=reference.probabilities,
                                         baseline=version.metrics)
        core = DriftMonitor(self._db, self._model, reference.frame, numeric=reference.numeric,
                            categorical=reference.categorical, settings=self.config.monitoring,
                            reference_scores=reference.scores, estimator=estimator)
        self.estimator = estimator
        # In memory: the rolling window and the labelled rows (a restart starts them afresh). Checkpointed:
        # predictions waiting for labels, labels waiting for predictions (at most CHECKPOINT_S behind).
        # Stored: the drift reports, estimates, concept drift, and the canary's arms (at most ARMS_SAVE_S behind).
        performance = PerformanceTracker(reference.task, reference.class_labels or [], version.metrics,
                                         hands_off=self.shard > 0)
        if self.performance is not None:  # a rebase
            performance.carry_over(self.performance)
        elif self.shard == 0:  # the arms are shard 0's: later shards hand their counts over
            stored = load_arms(self._db, self._model)
            if stored is not None:
                performance.restore_arms(stored)
        # The error stream of this champion: a new one (after a rebase) starts afresh.
        self.concept = ErrorStreamDetector(reference.task, baseline_rmse=version.metrics.get("rmse"))
        self.version, self.core, self.performance = version, core, performance
        self.reference_dataset = reference.source
        self.reference = reference

    def _save_arms(self, force: bool = False) -> None:
        """Store the arms when they changed, at most once per ARMS_SAVE_S (under the lock); shard 0 only."""
        if self.shard:
            return
        stats = self.performance.arm_stats()
        at, saved = self._arms_saved
        now = self._clock()
        if stats != saved and (force or now - at >= self.ARMS_SAVE_S):
            save_arms(self._db, self._model, stats)
            self._arms_saved = (now, stats)

    def _ticker(self, every_s: float, slow_s: float) -> None:
        slow_at = time.monotonic() + slow_s
        while not self._stop.wait(every_s):
            if self.shard:  # a later shard: no windows or estimates of its own
                steps: tuple[Callable[[], Any], ...] = (self.hand_off,)
                if time.monotonic() >= slow_at:
                    steps, slow_at = (self.hand_off, self.checkpoint), time.monotonic() + slow_s
            else:
                steps = (self.tick,)
                if time.monotonic() >= slow_at:
                    steps, slow_at = (self.tick, self.check_estimates, self.checkpoint), time.monotonic() + slow_s
            for step in steps:
                try:
                    step()
                except Exception:  # noqa: BLE001 - a failed step (the DB, the store away) is retried next time
                    log.warning("monitor %s: %s failed; retrying in %.0fs", self._model, step.__name__, every_s,
                                exc_info=True)

    @property
    def _checkpoint_key(self) -> str:
        # Gzipped JSON, but not named .gz: pyarrow's filesystems would decompress a .gz on reading.
        suffix = f"-{self.shard}" if self.shard else ""
        return f"monitoring/{self._model}/intake{suffix}.checkpoint"

    def checkpoint(self, force: bool = False) -> bool:
        """Store the predictions waiting for labels and the labels waiting for predictions, if they changed
        (and the last one's cost allows: ``CHECKPOINT_SHARE``)."""
        if not force and time.monotonic() < self._checkpoint_due:
            return False
        started = time.monotonic()
        with self._lock:
            changes = self.performance.changes
            if changes == self._checkpointed:
                return False
            size = self.performance.pending_bytes + 64 * self.performance.held_count
            estimate = size * self._checkpoint_s_per_byte
            if not force and estimate > self.CHECKPOINT_CHEAP_S and (
                    started - self._checkpoint_at < estimate / self.CHECKPOINT_SHARE):
                return False
            state = self.performance.export_state()
            if not self.shard:  # shard 0's detector reads the whole error stream
                state["concept"] = self.concept.export_state()
        body = json.dumps({"model": self._model, "saved_at": time.time(), **state}, default=str).encode()
        self._store.write_bytes(self._checkpoint_key, gzip.compress(body, compresslevel=1))
        self._checkpointed = changes
        cost = time.monotonic() - started
        self._checkpoint_due = started + cost / self.CHECKPOINT_SHARE
        self._checkpoint_at = started
        if size > 2**20:  # measured on enough to be a rate, not the fixed cost of a write
            self._checkpoint_s_per_byte = cost / size
        return True

    def _restore(self) -> int:
        """Take back the last checkpoint (a restarted actor); the entries restored, 0 when there is none."""
        if not self._store.exists(self._checkpoint_key):
            return 0
        try:
            state = json.loads(gzip.decompress(self._store.read_bytes(self._checkpoint_key)))
            n = self.performance.import_state(state)
            if state.get("concept") and not self.shard:
                self.concept.import_state(state["concept"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("monitor %s: its intake checkpoint could not be read (%s); starting without it", self._model, e)
            return 0
        self._checkpointed = self.performance.changes
        return n

    def check_estimates(self, limit: int = ESTIMATE_WINDOWS) -> list[EstimateCheck]:
        """Set each recent window's estimate beside what the labels that arrived since show (stored)."""
        with self._lock:
            checks = read_estimates(self._db, self._model, limit)
            # Every row labelled: nothing more can arrive for it.
            open_checks = [c for c in checks if c.labelled < c.rows]
            realised = dict(zip((c.window_id for c in open_checks),
                                self.performance.realised_in([(c.window_start, c.window_end) for c in open_checks])))
            out = []
            for check in checks:
                if check.window_id not in realised:
                    out.append(check)
                    continue
                seen = realised[check.window_id]
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
        self.checkpoint(force=True)
        if self.shard:
            self.hand_off()

    # -- shards ----------------------------------------------------------------------------------
    MAX_UNSENT = 100  # handoffs kept while shard 0 is away (each at most HANDOFF_S of joins)

    def hand_off(self) -> int:
        """A later shard: hand what its joins produced since the last call to shard 0; the handoffs sent.
        One that shard 0 does not take is kept (at most ``MAX_UNSENT``) and sent first next time."""
        with self._lock:
            handoff = self.performance.handoff()
        if any(handoff[k] for k in ("labelled", "errors", "rows", "arms", "counts")):
            self._unsent.append(handoff)
        if len(self._unsent) > self.MAX_UNSENT:
            self.handoffs["dropped"] += len(self._unsent) - self.MAX_UNSENT
            log.warning("monitor %s shard %d: shard 0 has been away; %d handoffs dropped", self._model, self.shard,
                        len(self._unsent) - self.MAX_UNSENT)
            del self._unsent[:-self.MAX_UNSENT]
        sent = 0
        while self._unsent:
            try:
                self._shard_zero()(self._unsent[0])
            except Exception:  # noqa: BLE001 - kept for the next tick; the join goes on meanwhile
                self.handoffs["failed"] += 1
                log.warning("monitor %s shard %d: could not hand off to shard 0; retrying", self._model, self.shard,
                            exc_info=True)
                break
            self._unsent.pop(0)
            sent += 1
        self.handoffs["sent"] += sent
        return sent

    def _shard_zero(self) -> Callable[[dict[str, Any]], Any]:
        if self._peer is None:
            # Here, not at the top: the client imports this module (through monitoring.actor).
            from aiinfra.monitoring.client import MonitorClient

            client = MonitorClient.for_model(self.config, self._model)
            self._peer = client.absorb
        return self._peer

    def absorb(self, handoff: dict[str, Any]) -> dict[str, Any]:
        """Shard 0: another shard's joins (``hand_off``), as if they had happened here."""
        if self.shard:
            raise ValueError(f"monitor shard {self.shard} of {self._model!r} does not absorb; shard 0 does")
        with self._lock:
            n = self.performance.absorb(handoff)
            concept = self._labels_joined()
        return {"labelled": n, "concept_drift": [c.model_dump(mode="json") for c in concept]}

    def _labels_joined(self) -> list[ConceptDrift]:
        """After labels joined (under the lock): the error stream, the arms, the gauges; the concept drift found."""
        concept = self._error_stream()
        self._save_arms()
        snap = self._gauges_due()
        if snap is not None:
            self._metrics.performance(self._model, snap["metrics"])
        self._metrics.concept(self._model, concept)
        return concept

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
                tokens: list[str | None] | None = None, *, at: float | None = None,
                probabilities: Any = None) -> list[dict[str, Any]]:
        """Rows served (with scores, request ids, predicted labels, the version that answered each and the API
        token each request was made with), and failed requests per version; returns the windows this closed.
        ``at``: their arrival time (default now; a sharded monitor's client gives every shard the same);
        ``probabilities``: a multiclass model's every class's probability per row (rows, classes)."""
        # One arrival time for both sides: a window's span finds its rows' labels by it.
        at = time.time() if at is None else float(at)
        with self._lock:
            over_quota = self.core.rows_over_quota
            # A later shard joins only: shard 0 cuts the windows from every row.
            reports = (self.core.observe(rows, scores, at=at, tokens=tokens, probabilities=probabilities)
                       if rows is not None and len(rows) and not self.shard else [])
            over_quota = self.core.rows_over_quota - over_quota
            if request_ids is not None and scores is not None:
                self.performance.record(request_ids, scores, labels, versions=versions, rows=rows, served_at=at,
                                        tokens=tokens)
            if errors:
                self.performance.record_errors(errors)
            concept = self._error_stream()  # labels that were held for these predictions joined just now
            self._save_arms()
        if not self.shard:  # shard 0 sees every row
            self._metrics.rows(self._model, len(rows))
            self._metrics.refused(self._model, "rows_over_token_share", over_quota)
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
            counts = {k: outcomes.count(k) for k in OUTCOMES}
            concept = self._labels_joined()
        self._metrics.refused(self._model, "labels_refused", counts["refused"])
        return {**counts, "outcomes": outcomes, "concept_drift": [c.model_dump(mode="json") for c in concept]}

    def _gauges_due(self) -> dict[str, Any] | None:
        """The performance snapshot, when the gauges are due (at most once per PERFORMANCE_METRICS_S; under the lock)."""
        now = self._clock()
        if self.shard or now - self._performance_at < self.PERFORMANCE_METRICS_S:
            return None
        self._performance_at = now
        return self.performance.snapshot()

    def _error_stream(self) -> list[ConceptDrift]:
        """Feed the rows joined since the last call to the error-stream detector; store what it finds (under the
        lock). A later shard keeps them for its handoff: one detector, shard 0's, reads the whole stream."""
        if self.shard:
            return []
        errors = self.performance.drain_errors()
        if not len(errors):
            return []
        found = self.concept.update(self.concept.errors_of(errors[:, 0], errors[:, 1]))
        return [save_concept_drift(self._db, self._model, d, metric=self.concept.metric) for d in found]

    def arm_stats(self) -> dict[str, Any]:
        """Requests, errors, labelled and correct rows per served version since ``reset_arms``, as a canary is
        judged on them: one client token's own labels at most ``monitoring.max_token_share`` of an arm's."""
        with self._lock:
            self._save_arms(force=True)  # what the autopilot decides on is what a restart resumes from
            return judged_arms(self.performance.arm_stats(), self.config.monitoring.max_token_share)

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
                "shards": self.config.monitoring.shards,
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
