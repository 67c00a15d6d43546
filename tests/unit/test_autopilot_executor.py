"""The autopilot's executor with fake ports: what each decision does to aliases, monitors and jobs.

No Ray: the registry is the plain class, the monitors and the job server are fakes, the clock is fake.
"""

from __future__ import annotations

import time

import pytest

from aiinfra.autopilot.executor import AutopilotExecutor
from aiinfra.autopilot.retrain_result import (
    RetrainResult,
    read_retrain_result,
    retrain_result_key,
    write_retrain_result,
)
from aiinfra.errors import InvalidInput
from aiinfra.identity.tokens import TokenStore
from aiinfra.jobs import JobState
from aiinfra.monitoring.core import MIGRATIONS as MONITORING_MIGRATIONS
from aiinfra.monitoring.core import DriftReport, DriftResult
from aiinfra.platform import open_local

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store

MODEL = "churn"
POLICY = {
    "model": MODEL,
    "trigger": {"drift_features_min": 2, "consecutive_windows": 2, "min_labelled": 100, "performance_drop": None},
    "cooldown_s": 600,
    "max_retrains_per_day": 2,
    "retrain": {"training_config": "jobs/configs/churn.yaml"},
    "canary": {"share": 0.25, "min_requests": 100, "min_labelled": 100, "max_duration_s": 3600},
}


class Clock:
    def __init__(self) -> None:
        self.now = time.time() + 100.0  # ahead of the wall clock the stored policy's time comes from

    def __call__(self) -> float:
        return self.now


class FakeMonitors:
    def __init__(self) -> None:
        self.arms: dict[str, dict[str, int]] = {}
        self.calls: list[str] = []

    def performance_snapshot(self, model: str):
        return None

    def arm_stats(self, model: str):
        return {"arms": self.arms}

    def reset_arms(self, model: str) -> None:
        self.calls.append("reset_arms")
        self.arms = {}

    def rebase(self, model: str) -> None:
        self.calls.append("rebase")


class FakeJobs:
    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []
        self.memory: dict[str, int | None] = {}
        self.states: dict[str, JobState] = {}
        self.driver_memory: int | Exception | None = None  # what retrain_memory answers (or raises)

    def submit(self, entrypoint: str, *, submission_id: str, metadata: dict[str, str],
               entrypoint_memory: int | None = None) -> str:
        self.submitted.append((submission_id, entrypoint))
        self.memory[submission_id] = entrypoint_memory
        self.states[submission_id] = JobState(submission_id, "RUNNING")
        return submission_id

    def retrain_memory(self, retrain) -> int | None:
        if isinstance(self.driver_memory, Exception):
            raise self.driver_memory
        return self.driver_memory

    def state(self, job_id: str) -> JobState:
        return self.states[job_id]

    def logs(self, job_id: str) -> str:
        return "Traceback ...\nValueError: the data went away"


@pytest.fixture
def world(config, tmp_path):
    p = open_local(config)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "weights.safetensors").write_bytes(b"x" * 64)
    for _ in range(2):
        p.registry.register(MODEL, model_dir)
    p.registry.set_alias(MODEL, 1, "champion")
    db = p.registry._backend.service.db
    db.ensure_schema("monitoring", MONITORING_MIGRATIONS)
    clock, monitors, jobs = Clock(), FakeMonitors(), FakeJobs()

    def executor() -> AutopilotExecutor:  # a new one over the same stores: what a restarted actor is
        return AutopilotExecutor(db, p.store, registry=p.registry, monitors=monitors, jobs=jobs, clock=clock,
                                 python="python")

    yield p, db, clock, monitors, jobs, executor
    p.close()


def _drift_window(db, window_id: int, at: float) -> None:
    result = DriftResult(features=[], drifted_features=["a", "b"], share_drifted=1.0, prediction=None, drift=True,
                         alpha=0.05, correction="bonferroni")
    report = DriftReport(model=MODEL, window_id=window_id, created_at=at, window_start=at - 1, window_end=at,
                         rows=1000, status="drift", reason="test", result=result)
    with db.transaction() as tx:
        tx.execute("INSERT INTO drift_reports (model, window_id, created_at, window_start, window_end, rows, status, "
                   "report) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (MODEL, window_id, at, at - 1, at, 1000, report.status, report.model_dump_json()))


def _retrain_decided(world, policy: dict | None = None) -> tuple[AutopilotExecutor, list[dict]]:
    """A new executor watching ``policy`` (POLICY), two drift windows, one tick: the retrain decided (and sent)."""
    _, db, clock, _, _, executor = world
    ex = executor()
    ex.watch(policy or POLICY)
    clock.now += 10
    _drift_window(db, 1, clock.now)
    _drift_window(db, 2, clock.now)
    return ex, ex.tick()


def _to_canary(world) -> tuple[AutopilotExecutor, str]:
    p, db, clock, monitors, jobs, executor = world
    ex = executor()
    ex.watch(POLICY)
    clock.now += 10
    _drift_window(db, 1, clock.now)
    _drift_window(db, 2, clock.now)
    actions = [d["action"] for d in ex.tick()]
    assert actions == ["none", "retrain"] or actions == ["retrain"]
    (job_id, entrypoint), = jobs.submitted
    assert retrain_result_key(MODEL, job_id) in entrypoint and "--config jobs/configs/churn.yaml" in entrypoint
    assert "--min-trusted-holdout 100 --max-untrusted-share 0.3" in entrypoint  # the policy's defaults
    assert ex.tick() == []  # the job still runs
    write_retrain_result(p.store, db, retrain_result_key(MODEL, job_id),
                         RetrainResult(model=f"{MODEL}@2", version=2, challenger=f"{MODEL}@2",
                                       holdout="trusted production rows", holdout_rows=400, trusted_rows=2000,
                                       untrusted_rows=900, untrusted_left_out=300))
    jobs.states[job_id] = JobState(job_id, "SUCCEEDED")
    (started,) = ex.tick()
    assert started["action"] == "start_canary"
    assert started["evidence"]["judged_on"]["holdout"] == "trusted production rows"  # in the decision log
    assert started["evidence"]["judged_on"]["untrusted_left_out"] == 300
    return ex, job_id


def test_a_retrain_that_succeeds_starts_a_canary_with_the_policys_share_on_the_alias(world):
    p, _, _, monitors, _, _ = world
    _to_canary(world)
    challenger = p.registry.get(f"{MODEL}@challenger")
    assert challenger.version == 2 and challenger.alias_shares == {"challenger": 0.25}
    assert monitors.calls == ["reset_arms"]


def test_a_canary_that_holds_up_is_promoted_and_the_monitor_rebased(world):
    p, _, clock, monitors, _, _ = world
    ex, _ = _to_canary(world)
    monitors.arms = {"1": {"requests": 900, "errors": 0, "labelled": 900, "correct": 800},
                     "2": {"requests": 300, "errors": 0, "labelled": 300, "correct": 285}}
    clock.now += 60
    assert [d["action"] for d in ex.tick()] == ["promote"]
    assert p.registry.get(f"{MODEL}@champion").version == 2
    assert "challenger" not in p.registry.get(f"{MODEL}@2").aliases
    assert monitors.calls[-1] == "rebase"


def test_a_failing_challenger_is_rolled_back_and_the_champion_keeps_serving(world):
    p, _, clock, monitors, _, _ = world
    ex, _ = _to_canary(world)
    monitors.arms = {"1": {"requests": 900, "errors": 0, "labelled": 900, "correct": 800},
                     "2": {"requests": 300, "errors": 30, "labelled": 300, "correct": 200}}
    clock.now += 60
    assert [d["action"] for d in ex.tick()] == ["rollback"]
    assert p.registry.get(f"{MODEL}@champion").version == 1
    assert p.registry.get(f"{MODEL}@1").aliases == ["champion"]
    assert p.registry.get(f"{MODEL}@2").aliases == []


def test_a_failed_job_aborts_the_cycle_with_its_log_in_the_reason(world):
    p, db, clock, _, jobs, executor = world
    ex, _ = _retrain_decided(world)
    (job_id, _), = jobs.submitted
    jobs.states[job_id] = JobState(job_id, "FAILED", "exit code 1")
    (decision,) = ex.tick()
    assert decision["action"] == "abort" and "the data went away" in decision["reason"]
    assert ex.status(MODEL)["models"][MODEL]["state"]["state"] == "watching"
    assert "challenger" not in [a for v in p.registry.list_versions(MODEL) for a in v.aliases]


def test_a_job_that_succeeds_without_a_result_aborts(world):
    _, db, clock, _, jobs, executor = world
    ex, _ = _retrain_decided(world)
    (job_id, _), = jobs.submitted
    jobs.states[job_id] = JobState(job_id, "SUCCEEDED")
    (decision,) = ex.tick()
    assert decision["action"] == "abort" and "wrote no result" in decision["reason"]


def test_a_retrain_job_asks_for_its_drivers_memory_and_one_no_node_could_hold_is_not_sent(world):
    p, db, clock, _, jobs, executor = world
    jobs.driver_memory = 3 << 30
    ex, _ = _retrain_decided(world)
    (job_id, _), = jobs.submitted
    assert jobs.memory[job_id] == 3 << 30
    assert any("asks for 3.00 GiB" in e["reason"] for e in ex.status(MODEL)["events"] if e["action"] == "submitted")


def test_a_retrain_whose_driver_no_node_could_hold_aborts_before_a_job_is_sent(world):
    p, db, clock, _, jobs, executor = world
    jobs.driver_memory = InvalidInput("the retrain of churn: its driver would hold about 40.00 GiB, more than any node")
    ex, decisions = _retrain_decided(world, {**POLICY, "cooldown_s": 0})
    assert [d["action"] for d in decisions][-2:] == ["retrain", "abort"] and jobs.submitted == []
    assert "not submitted" in decisions[-1]["reason"] and "40.00 GiB" in decisions[-1]["reason"]
    assert ex.status(MODEL)["models"][MODEL]["state"]["state"] == "watching"

def test_a_gate_refusal_aborts_and_names_the_reason(world):
    p, db, clock, _, jobs, executor = world
    ex, _ = _retrain_decided(world)
    (job_id, _), = jobs.submitted
    write_retrain_result(p.store, db, retrain_result_key(MODEL, job_id),
                         RetrainResult(model=f"{MODEL}@2", version=2, challenger=None,
                                       gate={"passed": False, "reason": "accuracy 0.61 < champion 0.80"}))
    jobs.states[job_id] = JobState(job_id, "SUCCEEDED")
    (decision,) = ex.tick()
    assert decision["action"] == "abort" and "champion kept" in decision["reason"]
    assert "accuracy 0.61 < champion 0.80" in decision["evidence"]["error"]


def test_a_retrain_result_changed_in_the_store_is_not_trusted(world):
    """Whoever may write the artifact store must not choose the next challenger: the record's hash is in the DB."""
    p, db, clock, _, jobs, executor = world
    ex, _ = _retrain_decided(world)
    (job_id, _), = jobs.submitted
    key = retrain_result_key(MODEL, job_id)
    write_retrain_result(p.store, db, key, RetrainResult(model=f"{MODEL}@2", version=2, challenger=None,
                                                         gate={"passed": False, "reason": "worse"}))
    forged = RetrainResult(model=f"{MODEL}@2", version=2, challenger=f"{MODEL}@2", gate={"passed": True})
    p.store.write_bytes(key, forged.model_dump_json().encode())
    jobs.states[job_id] = JobState(job_id, "SUCCEEDED")
    (decision,) = ex.tick()
    assert decision["action"] == "abort" and "does not match the SHA-256" in decision["evidence"]["error"]
    p.store.write_bytes("autopilot/churn/never-recorded.json", forged.model_dump_json().encode())
    with pytest.raises(InvalidInput, match="no SHA-256 in the metadata DB"):
        read_retrain_result(p.store, db, "autopilot/churn/never-recorded.json")


def test_a_restart_right_after_deciding_to_promote_finishes_the_promotion(world):
    p, _, clock, monitors, _, executor = world
    ex, _ = _to_canary(world)
    monitors.arms = {"1": {"requests": 900, "errors": 0, "labelled": 900, "correct": 800},
                     "2": {"requests": 300, "errors": 0, "labelled": 300, "correct": 285}}
    clock.now += 60
    # The decision is committed, then the process dies before it moves any alias.
    pilot = ex._pilots[MODEL]
    decision = pilot.on_canary_stats(monitors.arms["1"], monitors.arms["2"])
    assert decision.action == "promote"
    assert p.registry.get(f"{MODEL}@champion").version == 1
    restarted = executor()
    restarted.tick()  # reconciles first: repeats the promotion once
    assert p.registry.get(f"{MODEL}@champion").version == 2
    assert p.registry.get(f"{MODEL}@2").aliases == ["champion"]
    assert monitors.calls[-1] == "rebase"


def test_a_restart_mid_canary_restores_the_challenger_alias(world):
    p, _, _, _, _, executor = world
    _to_canary(world)
    p.registry.remove_alias(MODEL, "challenger")  # say the alias write was lost with the process
    restarted = executor()
    restarted.tick()
    assert p.registry.get(f"{MODEL}@challenger").alias_shares == {"challenger": 0.25}


def test_a_protected_challenger_alias_ends_the_canary_with_the_reason_and_the_champion_serving(world):
    p, db, clock, _, jobs, executor = world
    p.registry.set_policy(MODEL, {"aliases": {"challenger": {"approvals": 1}}})
    ex, _ = _retrain_decided(world)
    (job_id, _), = jobs.submitted
    write_retrain_result(p.store, db, retrain_result_key(MODEL, job_id),
                         RetrainResult(model=f"{MODEL}@2", version=2, challenger=f"{MODEL}@2"))
    jobs.states[job_id] = JobState(job_id, "SUCCEEDED")
    started, ended = ex.tick()
    assert (started["action"], ended["action"]) == ("start_canary", "rollback")
    assert "could not start" in ended["reason"] and "protect `champion` instead" in ended["reason"]
    st = ex.status(MODEL)["models"][MODEL]
    assert st["state"]["state"] == "watching" and st["state"]["last_outcome"] == "rolled_back"
    assert p.registry.get(f"{MODEL}@champion").version == 1
    assert ex.tick() == []  # nothing repeats it

def _protected_canary_passes(world) -> AutopilotExecutor:
    p, _, clock, monitors, _, _ = world
    ex, _ = _to_canary(world)
    p.registry.set_policy(MODEL, {"aliases": {"champion": {"approvals": 1}}})
    monitors.arms = {"1": {"requests": 900, "errors": 0, "labelled": 900, "correct": 800},
                     "2": {"requests": 300, "errors": 0, "labelled": 300, "correct": 285}}
    clock.now += 60
    assert [d["action"] for d in ex.tick()] == ["promote", "await_approval"]
    return ex


def _approver(world):
    """A client holding a real approver token (the registry checks it), and the name the log gives it."""
    p, db = world[0], world[1]
    made = TokenStore(db, background=False).issue("approver", who="test")
    return p.registry.with_token(made.token), f"token:{made.id}"


def test_a_protected_champion_waits_for_its_approval_then_the_cycle_ends_promoted(world):
    p, _, clock, monitors, _, executor = world
    ex = _protected_canary_passes(world)
    assert p.registry.get(f"{MODEL}@champion").version == 1  # it waits for its approver
    (request,) = p.registry.list_requests(MODEL, pending_only=True)
    assert (request.version, request.alias, request.needed) == (2, "champion", 1)
    assert "challenger" not in p.registry.get(f"{MODEL}@2").aliases and "rebase" not in monitors.calls
    state = ex.status(MODEL)["models"][MODEL]["state"]
    assert state["state"] == "awaiting_approval" and state["approval_request"] == request.id
    assert ex.tick() == []  # still pending: nothing decided, no new cycle starts
    assert executor().tick() == []  # a restarted autopilot keeps waiting on the same request
    _approver(world)[0].approve(request.id)
    clock.now += 5
    (approved,) = ex.tick()
    assert approved["action"] == "approved" and request.id in approved["reason"]
    assert p.registry.get(f"{MODEL}@champion").version == 2 and monitors.calls[-1] == "rebase"
    state = ex.status(MODEL)["models"][MODEL]["state"]
    assert state["state"] == "watching" and state["last_outcome"] == "promoted" and state["in_cooldown"]


def test_a_refused_promotion_ends_the_cycle_with_the_champion_unchanged(world):
    p, _, clock, monitors, _, _ = world
    ex = _protected_canary_passes(world)
    (request,) = p.registry.list_requests(MODEL, pending_only=True)
    approver, name = _approver(world)
    approver.refuse(request.id, reason="not this week")
    (decided,) = ex.tick()
    assert decided["action"] == "not_approved" and f"refused by {name}" in decided["reason"]
    assert p.registry.get(f"{MODEL}@champion").version == 1 and "rebase" not in monitors.calls
    assert ex.status(MODEL)["models"][MODEL]["state"]["last_outcome"] == "not_approved"
