"""The autopilot of one model: drift and performance in, retrain / canary / promote / roll back decisions out.

A plain class over a MetadataDB (schema component ``autopilot``); the named actor ``autopilot``
wraps it later and carries the decisions out (submits the retraining Ray job, moves registry
aliases, configures the router's canary). No Ray here, and nothing here acts on the world: every
method only decides, and records.

States, per model::

    watching --retrain--> retraining --start_canary--> canary --promote | rollback--> watching
                               \\--abort (failed retrain, champion kept)--> watching

A cycle's end (promote, rollback, abort) starts the cooldown. The state lives in one row per
model and every decision other than ``none`` is appended to a log, with its evidence, in the same
transaction as the state change: a new instance on the same DB (the actor restarted) resumes
exactly where the last one stopped, mid-canary included, and ``max_retrains_per_day`` counts the
log, not memory.

Drift windows: a window counts when at least ``trigger.drift_features_min`` features drifted;
``trigger.consecutive_windows`` counting windows in a row trigger a retrain. A ``skipped`` window
neither counts nor resets the streak; any other window (``ok``, or a drift with fewer features,
e.g. prediction drift only) resets it. A report whose ``window_id`` was already seen is ignored, so
a retried call never counts twice. Windows are counted only while watching (cooldown included);
starting a cycle resets the streak.

Canary: ``on_canary_stats`` takes each arm's cumulative counters since the canary started. The
challenger is rolled back early when its failed requests already exceed the error budget of the
whole canary (``max_error_rate * min_requests``) or, past ``min_requests``, its error rate exceeds
``max_error_rate``; or when, with ``rollback.min_labelled`` labelled on each arm, its observed
metric is below the champion's by more than ``max_regression``. It is promoted when it has
``min_requests`` requests and ``min_labelled`` labels and the one-sided two-proportion z-test rejects
"challenger worse than champion by more than ``margin``"; rolled back when ``max_duration_s``
passed without that.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator
from scipy.stats import norm

from aiinfra.autopilot.policy import AutopilotPolicy, CanaryMetric, load_policy
from aiinfra.config import validate_as
from aiinfra.errors import Conflict, InvalidInput
from aiinfra.monitoring.core import DriftReport
from aiinfra.storage import MetadataDB, Migration
from aiinfra.storage.metadata import Transaction
from aiinfra.training.metrics import higher_is_better

__all__ = [
    "COMPONENT",
    "MIGRATIONS",
    "Action",
    "ArmStats",
    "Autopilot",
    "Decision",
    "StateName",
    "load_policies",
    "non_inferiority_test",
    "save_policy",
]

Action = Literal["none", "retrain", "start_canary", "promote", "rollback", "abort", "await_approval",
                 "approved", "not_approved"]
# awaiting_approval: the canary passed but ``champion`` is protected (registry/approvals.py): the promotion waits
# for its approvers, the champion keeps serving, and nothing starts a new cycle meanwhile.
StateName = Literal["watching", "retraining", "canary", "awaiting_approval"]
DAY_S = 86_400.0
MAX_DECISIONS = 1000

COMPONENT = "autopilot"

MIGRATIONS = (
    Migration(
        1,
        (
            """CREATE TABLE autopilot_state (
                model TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                data TEXT NOT NULL
            )""",
            """CREATE TABLE autopilot_decisions (
                model TEXT NOT NULL,
                seq INTEGER NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                action TEXT NOT NULL,
                state TEXT NOT NULL,
                reason TEXT NOT NULL,
                evidence TEXT NOT NULL,
                PRIMARY KEY (model, seq)
            )""",
            "CREATE INDEX autopilot_decisions_action ON autopilot_decisions (model, action, at)",
        ),
    ),
    Migration(
        2,
        (
            """CREATE TABLE autopilot_policies (
                model TEXT PRIMARY KEY,
                updated_at DOUBLE PRECISION NOT NULL,
                policy TEXT NOT NULL
            )""",
        ),
    ),
)


class Decision(BaseModel):
    """What the autopilot decided and why. ``state`` is the state after the decision; ``seq`` is the
    decision's place in the model's log (None for ``none``, which is never logged)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    model: str
    state: StateName
    at: float
    seq: int | None = None


class ArmStats(BaseModel):
    """One canary arm's cumulative counters since the canary started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    labelled: int = Field(ge=0)
    correct: int = Field(ge=0)
    # Where the monitor capped a client token's own labels (monitoring.max_token_share): what was sent, and by
    # whom. labelled / correct above are what counts.
    labelled_all: int | None = Field(None, ge=0)
    correct_all: int | None = Field(None, ge=0)
    capped_tokens: tuple[str, ...] = ()

    @model_serializer(mode="wrap")
    def _without_empty_caps(self, handler: Any) -> dict[str, Any]:
        """Stored and shown as four counters unless a cap applied: the decision log names capped tokens only."""
        out = handler(self)
        if not self.capped_tokens:
            for key in ("labelled_all", "correct_all", "capped_tokens"):
                out.pop(key, None)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> ArmStats:
        if self.errors > self.requests:
            raise ValueError(f"errors {self.errors} > requests {self.requests}")
        if self.correct > self.labelled:
            raise ValueError(f"correct {self.correct} > labelled {self.labelled}")
        return self

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def counts(self, metric: CanaryMetric) -> tuple[int, int]:
        """``(k, n)``, the proportion ``metric`` is made of: correct of labelled, or errors of requests."""
        return (self.correct, self.labelled) if metric == "accuracy" else (self.errors, self.requests)


class _State(BaseModel):
    """The persisted state of one model (the ``data`` column, as JSON)."""

    model_config = ConfigDict(extra="ignore")

    state: StateName = "watching"
    drift_streak: int = 0
    last_window_id: int | None = None
    last_concept_id: int | None = None
    cooldown_until: float | None = None
    last_outcome: str | None = None  # promoted | rolled_back | aborted
    cycle_trigger: str | None = None  # drift | performance | estimated_performance | concept_drift
    retrain_decided_at: float | None = None
    job_id: str | None = None
    challenger_version: int | None = None
    canary_started_at: float | None = None
    canary_share: float | None = None
    champion_stats: ArmStats | None = None  # the latest cumulative counters of the canary
    challenger_stats: ArmStats | None = None
    approval_request: str | None = None  # awaiting_approval: the registry's request for the champion

    def end_cycle(self, now: float, cooldown_s: float, outcome: str) -> _State:
        return _State(
            state="watching",
            last_window_id=self.last_window_id,
            last_concept_id=self.last_concept_id,
            cooldown_until=now + cooldown_s,
            last_outcome=outcome,
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _json_ready(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python, containers recursively, NaN/inf as strings."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes, Mapping, list, tuple)):
        try:
            value = item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and not isinstance(value, bool) else None


def non_inferiority_test(
    challenger: ArmStats, champion: ArmStats, *, margin: float, alpha: float, metric: CanaryMetric = "accuracy"
) -> dict[str, Any]:
    """One-sided two-proportion z-test of H0 "challenger worse than champion by more than ``margin``" on ``metric``.

    ``z = (p_chal - p_champ + margin) / se`` with the unpooled standard error (for ``error_rate``, where
    higher is worse, the difference is turned around); the challenger passes when ``p = 1 - Phi(z) < alpha``.
    With no variance at all (both arms all right or all wrong) the observed difference decides.
    """
    (k1, n1), (k2, n2) = challenger.counts(metric), champion.counts(metric)
    if not n1 or not n2:
        what = "labelled requests" if metric == "accuracy" else "requests"
        raise InvalidInput(f"the non-inferiority test needs {what} on both arms")
    p1, p2 = k1 / n1, k2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    diff = (p1 - p2 if metric == "accuracy" else p2 - p1) + margin
    if se > 0:
        z = diff / se
        p_value = float(norm.sf(z))
    else:
        z = math.inf if diff > 0 else -math.inf
        p_value = 0.0 if diff > 0 else 1.0
    return {
        "test": "non_inferiority",
        "p_challenger": p1,
        "p_champion": p2,
        "n_challenger": n1,
        "n_champion": n2,
        "margin": margin,
        "alpha": alpha,
        "z": z,
        "p_value": p_value,
        "passed": p_value < alpha,
    }


class Autopilot:
    """The retrain / canary / promotion state machine of one model, persisted in the metadata DB.

    Args:
        db: the metadata DB; this class owns the tables created by ``MIGRATIONS``.
        policy: the model's ``AutopilotPolicy`` (or anything ``load_policy`` accepts).
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        db: MetadataDB,
        policy: AutopilotPolicy | Mapping[str, Any] | str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.policy = load_policy(policy)
        self.model = self.policy.model
        self._clock = clock
        db.ensure_schema(COMPONENT, MIGRATIONS)

    # -- triggers -------------------------------------------------------------------------------
    def on_drift_report(self, report: DriftReport | Mapping[str, Any]) -> Decision:
        """Count a closed drift window; decide a retrain after enough drifted windows in a row.

        Raises:
            InvalidInput: the report is for another model, or has no valid status.
        """
        status, window_id, drifted = self._read_report(report)
        trigger = self.policy.trigger
        k, w = trigger.drift_features_min, trigger.consecutive_windows
        now = self._clock()
        with self.db.transaction() as tx:
            st = self._load(tx)
            if window_id is not None and st.last_window_id is not None and window_id <= st.last_window_id:
                return self._none(st, now, f"drift window {window_id} already seen (last {st.last_window_id})")
            if window_id is not None:
                st.last_window_id = window_id
            evidence = {"window_id": window_id, "status": status, "drifted_features": drifted, "k": k, "w": w}
            if st.state != "watching":
                self._save(tx, st, now)
                return self._none(st, now, f"{self._busy(st)}; drift window not counted", evidence)
            if status == "skipped":
                reason = f"window skipped by the monitor; streak stays {st.drift_streak} of {w}"
            elif status == "drift" and len(drifted) >= k:
                st.drift_streak += 1
                reason = f"{len(drifted)} features drifted (>= {k}): streak {st.drift_streak} of {w}"
            else:
                st.drift_streak = 0
                reason = f"{len(drifted)} features drifted (< {k}): streak reset"
            evidence["streak"] = st.drift_streak
            estimated = self._estimated_drop(report)
            if estimated is not None:
                evidence["estimate"] = estimated
                cause = (f"estimated {estimated['metric']} {estimated['value']:.3f} (95% band up to "
                         f"{estimated['high']:.3f}) is more than {estimated['drop']:g} below the registered "
                         f"{estimated['baseline']:.3f}, before any label (CBPE, window {window_id})")
                return self._try_retrain(tx, st, now, "estimated_performance", cause, evidence)
            if st.drift_streak >= w:
                cause = (
                    f"{st.drift_streak} consecutive drift windows with >= {k} drifted features "
                    f"(latest: {', '.join(drifted)})"
                )
                return self._try_retrain(tx, st, now, "drift", cause, evidence)
            self._save(tx, st, now)
            return self._none(st, now, reason, evidence)

    def _estimated_drop(self, report: DriftReport | Mapping[str, Any]) -> dict[str, Any] | None:
        """The window's reliable estimate when its whole band lies more than ``estimated_drop`` below baseline."""
        drop = self.policy.trigger.estimated_drop
        data = report.model_dump() if isinstance(report, DriftReport) else report
        estimate = data.get("estimate") if isinstance(data, Mapping) else None
        if drop is None or not isinstance(estimate, Mapping) or not estimate.get("reliable"):
            return None
        name = self.policy.trigger.performance_metric
        metric = (estimate.get("metrics") or {}).get(name)
        baseline = _number((estimate.get("baseline") or {}).get(name))
        if not isinstance(metric, Mapping) or baseline is None:
            return None
        high, value = _number(metric.get("high")), _number(metric.get("value"))
        if high is None or value is None or not high < baseline - drop:
            return None
        return {"metric": name, "value": value, "high": high, "baseline": baseline, "drop": drop,
                "rows": estimate.get("rows")}

    def on_concept_drift(self, report: Mapping[str, Any]) -> Decision:
        """A concept-drift detection on the error stream; decide a retrain when the policy says so.

        A detection whose ``detection_id`` was already seen is ignored (a retried call never counts twice).
        """
        if not isinstance(report, Mapping):
            raise InvalidInput(f"a concept-drift report is a mapping, got {type(report).__name__}")
        detection_id = report.get("detection_id")
        if isinstance(detection_id, bool) or not isinstance(detection_id, int):
            raise InvalidInput(f"concept-drift report detection_id must be an integer, got {detection_id!r}")
        if report.get("model") not in (None, self.model):
            raise InvalidInput(f"concept-drift report of model {report.get('model')!r} sent to the autopilot of {self.model!r}")
        now = self._clock()
        evidence = {"detection_id": detection_id, "before": report.get("before"), "after": report.get("after"),
                    "reason": report.get("reason")}
        with self.db.transaction() as tx:
            st = self._load(tx)
            if st.last_concept_id is not None and detection_id <= st.last_concept_id:
                return self._none(st, now, f"concept drift {detection_id} already seen (last {st.last_concept_id})")
            st.last_concept_id = detection_id
            if not self.policy.trigger.concept_drift:
                self._save(tx, st, now)
                return self._none(st, now, "concept drift detected; trigger.concept_drift is off", evidence)
            if st.state != "watching":
                self._save(tx, st, now)
                return self._none(st, now, f"{self._busy(st)}; concept drift not acted on", evidence)
            return self._try_retrain(tx, st, now, "concept_drift", f"concept drift: {report.get('reason')}", evidence)

    def on_performance(self, snapshot: Mapping[str, Any]) -> Decision:
        """A ``PerformanceTracker.snapshot()``; decide a retrain when the rolling metric fell too far.

        Triggers when ``labelled >= trigger.min_labelled`` and the metric is worse than the baseline by
        more than ``trigger.performance_drop`` (below it; above it for error metrics such as rmse).
        """
        if not isinstance(snapshot, Mapping):
            raise InvalidInput(f"a performance snapshot is a mapping, got {type(snapshot).__name__}")
        trigger = self.policy.trigger
        name = trigger.performance_metric
        labelled = int(_number(snapshot.get("labelled")) or 0)
        metric = _number((snapshot.get("metrics") or {}).get(name))
        baseline = _number((snapshot.get("baseline") or {}).get(name))
        now = self._clock()
        evidence: dict[str, Any] = {
            "metric": name, "value": metric, "baseline": baseline, "labelled": labelled,
            "performance_drop": trigger.performance_drop, "min_labelled": trigger.min_labelled,
        }
        with self.db.transaction() as tx:
            st = self._load(tx)
            if trigger.performance_drop is None:
                return self._none(st, now, "the performance trigger is disabled", evidence)
            if metric is None or baseline is None:
                return self._none(st, now, f"no {name} and baseline in the snapshot", evidence)
            if labelled < trigger.min_labelled:
                return self._none(st, now, f"waiting: {labelled} of {trigger.min_labelled} labelled", evidence)
            # For an error metric (rmse, log_loss, brier, ...) a rise, not a fall, is the degradation.
            drop = baseline - metric if higher_is_better(name) else metric - baseline
            evidence["drop"] = drop
            if drop <= trigger.performance_drop:
                return self._none(
                    st, now, f"{name} {metric:.4f} within {trigger.performance_drop:g} of baseline {baseline:.4f}",
                    evidence,
                )
            if st.state != "watching":
                return self._none(st, now, f"{self._busy(st)}; performance drop not acted on", evidence)
            cause = (
                f"{name} {metric:.4f} is {drop:.4f} worse than the baseline {baseline:.4f} "
                f"(> {trigger.performance_drop:g}) over {labelled} labelled predictions"
            )
            return self._try_retrain(tx, st, now, "performance", cause, evidence)

    def _try_retrain(
        self, tx: Transaction, st: _State, now: float, trigger: str, cause: str, evidence: dict[str, Any]
    ) -> Decision:
        """Decide a retrain unless the cooldown or the daily limit forbids it (the state is saved either way)."""
        policy = self.policy
        if st.cooldown_until is not None and now < st.cooldown_until:
            self._save(tx, st, now)
            return self._none(st, now, f"{cause}, but in cooldown until {_iso(st.cooldown_until)}", evidence)
        recent = tx.query(
            "SELECT at FROM autopilot_decisions WHERE model = ? AND action = 'retrain' AND at > ? ORDER BY at",
            (self.model, now - DAY_S),
        )
        evidence["retrains_last_24h"] = len(recent)
        if len(recent) >= policy.max_retrains_per_day:
            if policy.max_retrains_per_day == 0:
                why = "max_retrains_per_day is 0"
            else:
                next_at = float(recent[len(recent) - policy.max_retrains_per_day]["at"]) + DAY_S
                why = (
                    f"max_retrains_per_day reached ({len(recent)} in the last 24 h); "
                    f"next allowed at {_iso(next_at)}"
                )
            self._save(tx, st, now)
            return self._none(st, now, f"{cause}, but {why}", evidence)
        evidence.update(
            trigger=trigger,
            training_config=policy.retrain.training_config,
            recent_rows=policy.retrain.recent_rows,
        )
        new = _State(
            state="retraining",
            last_window_id=st.last_window_id,
            last_concept_id=st.last_concept_id,
            cooldown_until=st.cooldown_until,
            last_outcome=st.last_outcome,
            cycle_trigger=trigger,
            retrain_decided_at=now,
        )
        return self._commit(tx, new, now, "retrain", f"retrain: {cause}", evidence)

    # -- retraining -----------------------------------------------------------------------------
    def retrain_submitted(self, job_id: str) -> Decision:
        """Record the retraining job's id (safe to repeat with the same id).

        Raises:
            Conflict: not retraining, or another job was already recorded for this retrain.
        """
        if not isinstance(job_id, str) or not job_id:
            raise InvalidInput("job_id must be a non-empty string")
        now = self._clock()
        with self.db.transaction() as tx:
            st = self._load(tx)
            if st.state != "retraining":
                raise Conflict(f"autopilot of {self.model!r} is {st.state}, not retraining; no job to record")
            if st.job_id is not None and st.job_id != job_id:
                raise Conflict(f"retrain of {self.model!r} already runs as job {st.job_id!r}, not {job_id!r}")
            st.job_id = job_id
            self._save(tx, st, now)
            return self._none(st, now, f"retrain job {job_id} submitted", {"job_id": job_id})

    def retrain_finished(
        self, succeeded: bool, challenger_version: int | None = None, error: str | None = None,
        judged_on: Mapping[str, Any] | None = None,
    ) -> Decision:
        """The retraining job ended: start the canary of the challenger, or abort and keep the champion.
        ``judged_on``: what the job's gate judged it on and what it trained on (its holdout, trusted and untrusted
        rows), recorded with the decision.

        A retrain that succeeded without registering a challenger (the gate refused it) aborts too.
        Repeating the call that ended the retrain returns its decision again without changing anything.

        Raises:
            Conflict: not retraining (and not a repeat of the call that ended it).
        """
        if challenger_version is not None and (
            isinstance(challenger_version, bool) or not isinstance(challenger_version, int) or challenger_version < 1
        ):
            raise InvalidInput(f"challenger_version must be a positive integer, got {challenger_version!r}")
        now = self._clock()
        with self.db.transaction() as tx:
            st = self._load(tx)
            if st.state != "retraining":
                repeat = self._repeat_of_finish(tx, succeeded, challenger_version)
                if repeat is not None:
                    return repeat
                raise Conflict(f"autopilot of {self.model!r} is {st.state}, not retraining; nothing finished")
            evidence = {
                "job_id": st.job_id, "succeeded": bool(succeeded), "challenger_version": challenger_version,
                "error": error, "trigger": st.cycle_trigger,
            }
            if judged_on:
                evidence["judged_on"] = dict(judged_on)
            if succeeded and challenger_version is not None:
                new = _State(
                    state="canary",
                    last_window_id=st.last_window_id,
                    last_concept_id=st.last_concept_id,
                    cooldown_until=st.cooldown_until,
                    last_outcome=st.last_outcome,
                    cycle_trigger=st.cycle_trigger,
                    retrain_decided_at=st.retrain_decided_at,
                    job_id=st.job_id,
                    challenger_version=challenger_version,
                    canary_started_at=now,
                    canary_share=self.policy.canary.share,
                )
                canary = self.policy.canary
                evidence.update(share=canary.share, min_requests=canary.min_requests,
                                min_labelled=canary.min_labelled, max_duration_s=canary.max_duration_s)
                reason = f"retrain succeeded: canary of version {challenger_version} on {canary.share:.0%} of traffic"
                return self._commit(tx, new, now, "start_canary", reason, evidence)
            new = st.end_cycle(now, self.policy.cooldown_s, "aborted")
            if succeeded:
                reason = "retrain finished without a challenger version; champion kept"
            else:
                reason = f"retrain failed: {error or 'no error given'}; champion kept"
            evidence["cooldown_until"] = new.cooldown_until
            return self._commit(tx, new, now, "abort", reason, evidence)

    def _repeat_of_finish(self, tx: Transaction, succeeded: bool, version: int | None) -> Decision | None:
        rows = tx.query(
            "SELECT * FROM autopilot_decisions WHERE model = ? ORDER BY seq DESC LIMIT 1", (self.model,)
        )
        if not rows:
            return None
        last = self._decision(rows[0])
        if last.action == "start_canary" and succeeded and last.evidence.get("challenger_version") == version:
            return last
        if last.action == "abort" and not (succeeded and version is not None):
            return last
        return None

    # -- canary ---------------------------------------------------------------------------------
    def on_canary_stats(self, champion: Mapping[str, Any], challenger: Mapping[str, Any]) -> Decision:
        """Each arm's cumulative ``requests``, ``errors``, ``labelled``, ``correct`` since the canary began.

        Outside a canary (late stats after the end) the answer is ``none``.

        Raises:
            InvalidInput: a counter is missing, negative, or inconsistent (errors > requests, ...).
        """
        champ = validate_as(ArmStats, dict(champion), "champion canary stats")
        chal = validate_as(ArmStats, dict(challenger), "challenger canary stats")
        canary, promotion, rollback = self.policy.canary, self.policy.promotion, self.policy.rollback
        now = self._clock()
        with self.db.transaction() as tx:
            st = self._load(tx)
            if st.state != "canary":
                return self._none(st, now, f"no canary running (state {st.state}); stats ignored")
            st.champion_stats, st.challenger_stats = champ, chal
            started = st.canary_started_at or now
            elapsed = now - started
            evidence: dict[str, Any] = {
                "challenger_version": st.challenger_version,
                "champion": champ.model_dump(),
                "challenger": chal.model_dump(),
                "champion_error_rate": champ.error_rate,
                "challenger_error_rate": chal.error_rate,
                "elapsed_s": elapsed,
            }
            version = st.challenger_version

            budget = rollback.max_error_rate * canary.min_requests
            if chal.errors > budget or (
                chal.requests >= canary.min_requests and chal.error_rate > rollback.max_error_rate
            ):
                evidence["max_error_rate"] = rollback.max_error_rate
                reason = (
                    f"roll back version {version}: {chal.errors} errors in {chal.requests} requests "
                    f"({chal.error_rate:.1%}) exceed max_error_rate {rollback.max_error_rate:.1%}"
                )
                return self._end_canary(tx, st, now, "rollback", reason, evidence)

            # The early regression check is on accuracy whatever the promotion metric: errors have their own.
            p_chal, p_champ = chal.accuracy, champ.accuracy
            if min(chal.labelled, champ.labelled) >= rollback.min_labelled and p_chal is not None and p_champ is not None:
                evidence.update(p_challenger=p_chal, p_champion=p_champ, max_regression=rollback.max_regression)
                if p_champ - p_chal > rollback.max_regression:
                    reason = (
                        f"roll back version {version}: accuracy {p_chal:.4f} is below the champion's "
                        f"{p_champ:.4f} by more than max_regression {rollback.max_regression:g}"
                    )
                    return self._end_canary(tx, st, now, "rollback", reason, evidence)

            enough = chal.requests >= canary.min_requests and chal.labelled >= canary.min_labelled
            test: dict[str, Any] | None = None
            if enough and champ.counts(promotion.metric)[1]:
                test = non_inferiority_test(chal, champ, margin=promotion.margin, alpha=promotion.alpha,
                                            metric=promotion.metric)
                evidence["test"] = test
                if test["passed"]:
                    reason = (
                        f"promote version {version}: {promotion.metric} {test['p_challenger']:.4f} vs "
                        f"{test['p_champion']:.4f}, non-inferior within {promotion.margin:g} "
                        f"(z={test['z']:.2f}, p={test['p_value']:.3g} < {promotion.alpha:g})"
                    )
                    return self._end_canary(tx, st, now, "promote", reason, evidence)

            if elapsed >= canary.max_duration_s:
                evidence["max_duration_s"] = canary.max_duration_s
                if test is not None:
                    why = f"non-inferiority not shown (p={test['p_value']:.3g} >= {promotion.alpha:g})"
                else:
                    why = (f"too little traffic ({chal.requests} of {canary.min_requests} requests, "
                           f"{chal.labelled} of {canary.min_labelled} labelled)")
                reason = f"roll back version {version}: max_duration_s {canary.max_duration_s:g} passed, {why}"
                return self._end_canary(tx, st, now, "rollback", reason, evidence)

            self._save(tx, st, now)
            if chal.requests < canary.min_requests:
                reason = f"waiting: {chal.requests} of {canary.min_requests} requests"
            elif chal.labelled < canary.min_labelled:
                reason = f"waiting: {chal.labelled} of {canary.min_labelled} labelled"
            elif test is None:
                what = "labelled champion requests" if promotion.metric == "accuracy" else "champion requests"
                reason = f"waiting: no {what} to compare with"
            else:
                reason = f"waiting: non-inferiority not yet shown (p={test['p_value']:.3g} >= {promotion.alpha:g})"
            return self._none(st, now, reason, evidence)

    def canary_not_started(self, why: str) -> Decision:
        """The challenger could not be put on live traffic (its alias is protected, say): the canary ends as a
        rollback with ``why``, the champion serving. Outside a canary the answer is ``none``."""
        now = self._clock()
        with self.db.transaction() as tx:
            st = self._load(tx)
            if st.state != "canary":
                return self._none(st, now, f"no canary running (state {st.state})")
            version = st.challenger_version
            return self._end_canary(tx, st, now, "rollback", f"roll back version {version}: the canary could not "
                                    f"start: {why}", {"challenger_version": version, "error": why})

    def _end_canary(
        self, tx: Transaction, st: _State, now: float, action: Action, reason: str, evidence: dict[str, Any]
    ) -> Decision:
        outcome = "promoted" if action == "promote" else "rolled_back"
        new = st.end_cycle(now, self.policy.cooldown_s, outcome)
        evidence["cooldown_until"] = new.cooldown_until
        return self._commit(tx, new, now, action, reason, evidence)

    # -- reading --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The model's current state, as stored, plus whether it is in cooldown and retrains in the last 24 h."""
        now = self._clock()
        rows = self.db.query("SELECT data, updated_at FROM autopilot_state WHERE model = ?", (self.model,))
        st = _State.model_validate_json(rows[0]["data"]) if rows else _State()
        recent = self.db.query(
            "SELECT COUNT(*) AS n FROM autopilot_decisions WHERE model = ? AND action = 'retrain' AND at > ?",
            (self.model, now - DAY_S),
        )
        return {
            "model": self.model,
            **st.model_dump(),
            "updated_at": rows[0]["updated_at"] if rows else None,
            "in_cooldown": st.cooldown_until is not None and now < st.cooldown_until,
            "retrains_last_24h": int(recent[0]["n"]),
        }

    def decisions(self, limit: int = 50) -> list[Decision]:
        """The model's logged decisions (never ``none``), newest first."""
        if not 1 <= limit <= MAX_DECISIONS:
            raise InvalidInput(f"limit must be between 1 and {MAX_DECISIONS}, got {limit}")
        rows = self.db.query(
            "SELECT * FROM autopilot_decisions WHERE model = ? ORDER BY seq DESC LIMIT ?", (self.model, limit)
        )
        return [self._decision(r) for r in rows]

    # -- storage --------------------------------------------------------------------------------
    def _read_report(self, report: DriftReport | Mapping[str, Any]) -> tuple[str, int | None, list[str]]:
        if isinstance(report, DriftReport):
            data: Mapping[str, Any] = report.model_dump()
        elif isinstance(report, Mapping):
            data = report
        else:
            raise InvalidInput(f"a drift report is a DriftReport or a mapping, got {type(report).__name__}")
        model = data.get("model")
        if model is not None and model != self.model:
            raise InvalidInput(f"drift report of model {model!r} sent to the autopilot of {self.model!r}")
        status = data.get("status")
        if status not in ("ok", "drift", "skipped"):
            raise InvalidInput(f"drift report status must be ok, drift or skipped, got {status!r}")
        window_id = data.get("window_id")
        if window_id is not None and (isinstance(window_id, bool) or not isinstance(window_id, int)):
            raise InvalidInput(f"drift report window_id must be an integer, got {window_id!r}")
        result = data.get("result") or {}
        drifted = result.get("drifted_features") if isinstance(result, Mapping) else None
        if drifted is None:
            drifted = data.get("drifted_features") or []
        return str(status), window_id, [str(f) for f in drifted]

    def _load(self, tx: Transaction) -> _State:
        rows = tx.query("SELECT data FROM autopilot_state WHERE model = ?", (self.model,))
        return _State.model_validate_json(rows[0]["data"]) if rows else _State()

    def _save(self, tx: Transaction, st: _State, now: float) -> None:
        tx.execute(
            "INSERT INTO autopilot_state (model, state, updated_at, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, "
            "data = excluded.data",
            (self.model, st.state, now, st.model_dump_json()),
        )

    def _commit(
        self, tx: Transaction, new: _State, now: float, action: Action, reason: str, evidence: dict[str, Any]
    ) -> Decision:
        """Save the new state and append the decision to the log, in the caller's transaction."""
        self._save(tx, new, now)
        top = tx.query("SELECT MAX(seq) AS top FROM autopilot_decisions WHERE model = ?", (self.model,))
        seq = int(top[0]["top"] or 0) + 1
        evidence = _json_ready(evidence)
        tx.execute(
            "INSERT INTO autopilot_decisions (model, seq, at, action, state, reason, evidence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.model, seq, now, action, new.state, reason, json.dumps(evidence, sort_keys=True, default=str)),
        )
        return Decision(action=action, reason=reason, evidence=evidence, model=self.model, state=new.state,
                        at=now, seq=seq)

    def _none(self, st: _State, now: float, reason: str, evidence: dict[str, Any] | None = None) -> Decision:
        return Decision(action="none", reason=reason, evidence=_json_ready(evidence or {}), model=self.model,
                        state=st.state, at=now)

    def _decision(self, row: Mapping[str, Any]) -> Decision:
        return Decision(
            action=row["action"], reason=row["reason"], evidence=json.loads(row["evidence"]), model=row["model"],
            state=row["state"], at=float(row["at"]), seq=int(row["seq"]),
        )

    # -- a protected champion -------------------------------------------------------------------------
    def approval_requested(self, request_id: str, version: int, needed: int) -> Decision:
        """The promotion just decided became a request (the champion is protected): wait for its approvers.

        Safe to repeat with the same request (a restart right after requesting)."""
        now = self._clock()
        with self.db.transaction() as tx:
            st = self._load(tx)
            if st.state == "awaiting_approval" and st.approval_request == request_id:
                return self._none(st, now, f"already awaiting approval of {request_id}")
            new = _State(state="awaiting_approval", last_window_id=st.last_window_id, last_concept_id=st.last_concept_id,
                         cycle_trigger=st.cycle_trigger, challenger_version=version, approval_request=request_id)
            reason = (f"champion is protected: promotion of version {version} waits for {needed} approval(s) of "
                      f"request {request_id} (`aiinfra models approve {request_id}`)")
            return self._commit(tx, new, now, "await_approval", reason, {"request": request_id,
                                                                         "challenger_version": version})

    def approval_resolved(self, request_id: str, status: str, decided_by: str | None = None) -> Decision:
        """The request was applied (the version is champion: the cycle ends promoted), refused or expired (it ends
        with the champion as it was); a request still pending is a ``none``."""
        now = self._clock()
        with self.db.transaction() as tx:
            st = self._load(tx)
            if st.state != "awaiting_approval" or st.approval_request != request_id:
                return self._none(st, now, f"not awaiting request {request_id}")
            if status == "pending":
                return self._none(st, now, f"awaiting approval of {request_id}")
            version = st.challenger_version
            evidence = {"request": request_id, "status": status, "decided_by": decided_by, "challenger_version": version}
            if status == "applied":
                new = st.end_cycle(now, self.policy.cooldown_s, "promoted")
                reason = f"version {version} is champion: request {request_id} was approved"
                return self._commit(tx, new, now, "approved", reason, {**evidence, "cooldown_until": new.cooldown_until})
            new = st.end_cycle(now, self.policy.cooldown_s, "not_approved")
            reason = f"request {request_id} was {status}" + (f" by {decided_by}" if decided_by else "") + \
                f": version {version} is not promoted, the champion stays"
            return self._commit(tx, new, now, "not_approved", reason, {**evidence, "cooldown_until": new.cooldown_until})

    @staticmethod
    def _busy(st: _State) -> str:
        if st.state == "retraining":
            return f"retraining in progress (job {st.job_id or 'not yet submitted'})"
        if st.state == "awaiting_approval":
            return f"promotion of version {st.challenger_version} awaiting approval ({st.approval_request})"
        return f"canary of version {st.challenger_version} in progress"


# -- stored policies, shared with the executor ------------------------------------------------------
def save_policy(db: MetadataDB, policy: AutopilotPolicy) -> None:
    """Store the policy the autopilot drives ``policy.model`` by (replacing the previous one)."""
    db.ensure_schema(COMPONENT, MIGRATIONS)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO autopilot_policies (model, updated_at, policy) VALUES (?, ?, ?) "
            "ON CONFLICT (model) DO UPDATE SET updated_at = excluded.updated_at, policy = excluded.policy",
            (policy.model, time.time(), policy.model_dump_json()),
        )


def remove_policy(db: MetadataDB, model: str) -> bool:
    db.ensure_schema(COMPONENT, MIGRATIONS)
    with db.transaction() as tx:
        found = tx.query("SELECT model FROM autopilot_policies WHERE model = ?", (model,))
        tx.execute("DELETE FROM autopilot_policies WHERE model = ?", (model,))
    return bool(found)


def load_policies(db: MetadataDB) -> list[AutopilotPolicy]:
    """Every stored policy, by model name."""
    db.ensure_schema(COMPONENT, MIGRATIONS)
    rows = db.query("SELECT policy FROM autopilot_policies ORDER BY model")
    return [AutopilotPolicy.model_validate_json(r["policy"]) for r in rows]
