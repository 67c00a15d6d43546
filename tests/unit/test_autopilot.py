"""The autopilot's policy and state machine, without Ray: a fake clock and a SQLite metadata DB."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy.stats import norm

from aiinfra.autopilot import Autopilot, AutopilotPolicy, load_policy
from aiinfra.autopilot.core import DAY_S
from aiinfra.errors import Conflict, InvalidInput
from aiinfra.monitoring import DriftReport, DriftResult
from aiinfra.storage import open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def policy_dict(**overrides) -> dict:
    base = {
        "model": "churn",
        "trigger": {"drift_features_min": 2, "consecutive_windows": 2, "min_labelled": 100},
        "cooldown_s": 600,
        "max_retrains_per_day": 2,
        "retrain": {"training_config": "jobs/configs/churn.yaml"},
        "canary": {"share": 0.1, "min_requests": 300, "min_labelled": 200, "max_duration_s": 3600},
    }
    base.update(overrides)
    return base


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def db(metadata_url):
    db = open_metadata_db(metadata_url)
    yield db
    db.close()


@pytest.fixture
def ap(db, clock):
    return Autopilot(db, policy_dict(), clock=clock)


class Windows:
    """Drift reports with increasing window ids, as the monitor sends them."""

    def __init__(self) -> None:
        self.next_id = 0

    def __call__(self, status: str, drifted: list[str] | None = None) -> dict:
        self.next_id += 1
        result = None
        if status != "skipped":
            drifted = drifted or []
            result = {"features": [], "drifted_features": drifted, "share_drifted": 0.0, "prediction": None,
                      "drift": bool(drifted), "alpha": 0.05, "correction": "bonferroni"}
        return {"model": "churn", "window_id": self.next_id, "created_at": 0.0, "window_start": 0.0,
                "window_end": 0.0, "rows": 1000, "status": status, "reason": "test", "result": result}


@pytest.fixture
def window():
    return Windows()


TWO = ["tenure_months", "monthly_charges"]


def trigger_retrain(ap: Autopilot, window: Windows):
    ap.on_drift_report(window("drift", TWO))
    decision = ap.on_drift_report(window("drift", TWO))
    assert decision.action == "retrain", decision.reason
    return decision


def to_canary(ap: Autopilot, window: Windows, version: int = 2):
    trigger_retrain(ap, window)
    ap.retrain_submitted("raysubmit_1")
    decision = ap.retrain_finished(True, version)
    assert decision.action == "start_canary", decision.reason
    return decision


def arm(requests: int, errors: int, labelled: int, correct: int) -> dict:
    return {"requests": requests, "errors": errors, "labelled": labelled, "correct": correct}


CHAMPION = arm(3000, 6, 2000, 1700)  # accuracy 0.85


# -- triggers ----------------------------------------------------------------------------------
def test_k_features_for_w_consecutive_windows_triggers_and_fewer_does_not(ap, window):
    d = ap.on_drift_report(window("drift", TWO))
    assert (d.action, d.evidence["streak"]) == ("none", 1) and "streak 1 of 2" in d.reason
    d = ap.on_drift_report(window("drift", ["plan"]))  # one feature < k = 2: the streak breaks
    assert (d.action, d.evidence["streak"]) == ("none", 0)
    ap.on_drift_report(window("drift", TWO))
    d = ap.on_drift_report(window("ok"))  # an ok window resets
    assert (d.action, d.evidence["streak"]) == ("none", 0)
    assert ap.on_drift_report(window("drift", TWO)).action == "none"
    assert ap.state()["state"] == "watching" and ap.decisions() == []

    d = ap.on_drift_report(window("drift", [*TWO, "plan"]))
    assert d.action == "retrain" and d.state == "retraining"
    assert "2 consecutive drift windows" in d.reason
    assert d.evidence["trigger"] == "drift" and d.evidence["training_config"] == "jobs/configs/churn.yaml"
    assert d.evidence["recent_rows"] == 5000 and d.evidence["drifted_features"] == [*TWO, "plan"]
    state = ap.state()
    assert state["state"] == "retraining" and state["drift_streak"] == 0 and state["job_id"] is None


def test_skipped_windows_neither_count_nor_reset(ap, window):
    ap.on_drift_report(window("drift", TWO))
    d = ap.on_drift_report(window("skipped"))
    assert d.action == "none" and d.evidence["streak"] == 1 and "skipped" in d.reason
    assert ap.on_drift_report(window("drift", TWO)).action == "retrain"


def test_a_drift_report_object_and_a_repeated_window_count_once(ap):
    result = DriftResult(features=[], drifted_features=TWO, share_drifted=0.4, prediction=None, drift=True,
                         alpha=0.05, correction="bonferroni")
    report = DriftReport(model="churn", window_id=7, created_at=0.0, window_start=0.0, window_end=0.0, rows=1000,
                         status="drift", reason="x", result=result)
    assert ap.on_drift_report(report).evidence["streak"] == 1
    again = ap.on_drift_report(report)  # a retried call
    assert again.action == "none" and "already seen" in again.reason and ap.state()["drift_streak"] == 1
    with pytest.raises(InvalidInput, match="model 'other'"):
        ap.on_drift_report({**report.model_dump(), "model": "other", "window_id": 8})
    with pytest.raises(InvalidInput, match="status"):
        ap.on_drift_report({"status": "weird"})


def test_cooldown_and_max_retrains_per_day(ap, window, clock):
    trigger_retrain(ap, window)
    ap.retrain_submitted("job-1")
    ap.retrain_finished(False, None, "OOM")  # cooldown 600 s from now
    ap.on_drift_report(window("drift", TWO))
    d = ap.on_drift_report(window("drift", TWO))
    assert d.action == "none" and "in cooldown until" in d.reason and ap.state()["in_cooldown"]

    clock.tick(601)  # the streak survived the cooldown: the next drifted window retrains
    assert ap.on_drift_report(window("drift", TWO)).action == "retrain"
    ap.retrain_finished(False, None, "again")

    clock.tick(601)
    ap.on_drift_report(window("drift", TWO))
    d = ap.on_drift_report(window("drift", TWO))
    assert d.action == "none" and "max_retrains_per_day reached (2 in the last 24 h)" in d.reason
    assert d.evidence["retrains_last_24h"] == 2 and ap.state()["retrains_last_24h"] == 2

    first_retrain = ap.decisions()[-1].at
    clock.now = first_retrain + DAY_S + 1  # the first retrain left the rolling 24 h
    d = ap.on_drift_report(window("drift", TWO))
    assert d.action == "retrain" and d.evidence["retrains_last_24h"] == 1


def test_performance_drop_triggers(db, clock):
    ap = Autopilot(db, policy_dict(), clock=clock)
    snap = {"labelled": 50, "metrics": {"accuracy": 0.70}, "baseline": {"accuracy": 0.86}}
    d = ap.on_performance(snap)
    assert d.action == "none" and "50 of 100 labelled" in d.reason
    d = ap.on_performance({**snap, "labelled": 500, "metrics": {"accuracy": 0.83}})
    assert d.action == "none" and "within 0.05" in d.reason
    d = ap.on_performance({**snap, "labelled": 500, "metrics": {"accuracy": 0.80}})
    assert d.action == "retrain" and d.evidence["trigger"] == "performance"
    assert math.isclose(d.evidence["drop"], 0.06) and "accuracy 0.8000" in d.reason
    assert ap.on_performance({**snap, "labelled": 500}).action == "none"  # already retraining

    off = Autopilot(db, policy_dict(model="other", trigger={"performance_drop": None}), clock=clock)
    assert "disabled" in off.on_performance({**snap, "labelled": 500}).reason
    rmse = Autopilot(db, policy_dict(model="reg", trigger={"performance_metric": "rmse"}), clock=clock)
    worse = {"labelled": 500, "metrics": {"rmse": 1.2}, "baseline": {"rmse": 1.0}}
    assert rmse.on_performance(worse).action == "retrain"  # for an error metric a rise is the drop
    brier = Autopilot(db, policy_dict(model="cal", trigger={"performance_metric": "brier"}), clock=clock)
    worse = {"labelled": 500, "metrics": {"brier": 0.30}, "baseline": {"brier": 0.20}}
    assert brier.on_performance(worse).action == "retrain"  # brier and ece are error metrics too


def _estimate(value: float, low: float, high: float, *, reliable: bool = True) -> dict:
    return {"method": "cbpe", "rows": 1000, "metrics": {"accuracy": {"value": value, "low": low, "high": high}},
            "reliable": reliable, "calibration_error": 0.02, "reason": "", "baseline": {"accuracy": 0.86}}


def test_an_estimated_drop_before_labels_triggers_only_when_reliable_and_past_its_band(db, window, clock):
    trigger = {"drift_features_min": 2, "consecutive_windows": 2, "estimated_drop": 0.05}
    ap = Autopilot(db, policy_dict(trigger=trigger), clock=clock)
    within = {**window("ok"), "estimate": _estimate(0.80, 0.77, 0.83)}  # the band reaches within 0.05 of 0.86
    assert ap.on_drift_report(within).action == "none"
    unreliable = {**window("ok"), "estimate": _estimate(0.70, 0.68, 0.72, reliable=False)}
    assert ap.on_drift_report(unreliable).action == "none"
    d = ap.on_drift_report({**window("ok"), "estimate": _estimate(0.76, 0.74, 0.78)})
    assert d.action == "retrain" and d.evidence["trigger"] == "estimated_performance"
    assert d.evidence["estimate"]["high"] == 0.78 and "before any label" in d.reason

    off = Autopilot(db, policy_dict(model="other"), clock=clock)  # estimated_drop defaults to None: off
    assert off.on_drift_report({**window("ok"), "model": "other", "estimate": _estimate(0.5, 0.4, 0.6)}).action == "none"


def test_concept_drift_on_the_error_stream_triggers_a_retrain_once(db, clock):
    ap = Autopilot(db, policy_dict(), clock=clock)
    report = {"model": "churn", "detection_id": 1, "before": 0.15, "after": 0.31,
              "reason": "error rate rose from 0.150 to 0.310 over the latest 200 labelled rows (ADWIN)"}
    d = ap.on_concept_drift(report)
    assert d.action == "retrain" and d.evidence["trigger"] == "concept_drift" and "0.310" in d.reason
    assert "already seen" in ap.on_concept_drift(report).reason
    assert ap.state()["last_concept_id"] == 1 and ap.state()["cycle_trigger"] == "concept_drift"
    with pytest.raises(InvalidInput, match="detection_id"):
        ap.on_concept_drift({"model": "churn", "detection_id": "2"})
    off = Autopilot(db, policy_dict(model="other", trigger={"concept_drift": False}), clock=clock)
    assert "off" in off.on_concept_drift({**report, "model": "other"}).reason


def test_failed_retrain_aborts_keeps_champion_and_starts_cooldown(ap, window, clock):
    trigger_retrain(ap, window)
    with pytest.raises(InvalidInput):
        ap.retrain_submitted("")
    ap.retrain_submitted("raysubmit_9")
    ap.retrain_submitted("raysubmit_9")  # a retry is fine
    with pytest.raises(Conflict, match="raysubmit_9"):
        ap.retrain_submitted("raysubmit_10")
    assert ap.state()["job_id"] == "raysubmit_9"

    d = ap.retrain_finished(False, None, "worker died")
    assert d.action == "abort" and d.state == "watching" and "champion kept" in d.reason
    assert d.evidence["job_id"] == "raysubmit_9" and d.evidence["error"] == "worker died"
    state = ap.state()
    assert state["state"] == "watching" and state["last_outcome"] == "aborted"
    assert state["challenger_version"] is None and state["cooldown_until"] == clock.now + 600
    assert ap.retrain_finished(False, None, "worker died") == d  # a retried call: same decision, not logged again
    assert [x.action for x in ap.decisions()] == ["abort", "retrain"]
    with pytest.raises(Conflict, match="not retraining"):
        ap.retrain_finished(True, 3)


def test_a_retrain_without_a_challenger_aborts(ap, window):
    trigger_retrain(ap, window)
    d = ap.retrain_finished(True, None)
    assert d.action == "abort" and "without a challenger" in d.reason


# -- canary ------------------------------------------------------------------------------------
def test_promote_a_clearly_non_inferior_challenger(ap, window, clock):
    to_canary(ap, window, version=4)
    clock.tick(600)
    challenger = arm(1200, 3, 1000, 880)  # accuracy 0.88 against 0.85
    d = ap.on_canary_stats(CHAMPION, challenger)
    assert d.action == "promote" and d.state == "watching" and "version 4" in d.reason
    test = d.evidence["test"]
    se = math.sqrt(0.88 * 0.12 / 1000 + 0.85 * 0.15 / 2000)
    assert math.isclose(test["z"], (0.88 - 0.85 + 0.01) / se)
    assert math.isclose(test["p_value"], norm.sf((0.88 - 0.85 + 0.01) / se)) and test["passed"]
    state = ap.state()
    assert state["state"] == "watching" and state["last_outcome"] == "promoted" and state["in_cooldown"]
    assert ap.on_canary_stats(CHAMPION, challenger).action == "none"  # late stats after the end


def test_a_capped_clients_labels_are_named_in_the_decision_and_only_the_counted_labels_judge(ap, window):
    """The monitor caps one client token's own labels (judged_arms); the decision log says who and how many."""
    to_canary(ap, window)
    capped = {**arm(350, 0, 220, 150), "labelled_all": 2220, "correct_all": 2150, "capped_tokens": ["attacker"]}
    d = ap.on_canary_stats(CHAMPION, capped)  # 150/220 = 0.68 counted (0.97 as sent): far below the champion
    assert d.action == "rollback"
    assert list(d.evidence["challenger"]["capped_tokens"]) == ["attacker"] and d.evidence["challenger"]["labelled_all"] == 2220
    assert "capped_tokens" not in d.evidence["champion"]  # four counters where nothing was capped

def test_wait_while_the_canary_has_too_little_evidence(ap, window):
    to_canary(ap, window)
    d = ap.on_canary_stats(CHAMPION, arm(120, 0, 80, 70))
    assert (d.action, d.reason) == ("none", "waiting: 120 of 300 requests")
    d = ap.on_canary_stats(CHAMPION, arm(350, 0, 150, 130))
    assert (d.action, d.reason) == ("none", "waiting: 150 of 200 labelled")
    d = ap.on_canary_stats(CHAMPION, arm(350, 0, 220, 185))  # 0.84: not yet shown non-inferior
    assert d.action == "none" and d.reason.startswith("waiting: non-inferiority not yet shown")
    assert not d.evidence["test"]["passed"]
    state = ap.state()
    assert state["state"] == "canary" and state["challenger_stats"] == arm(350, 0, 220, 185)
    assert [x.action for x in ap.decisions()] == ["start_canary", "retrain"]
    with pytest.raises(InvalidInput, match="errors 5 > requests 4"):
        ap.on_canary_stats(CHAMPION, arm(4, 5, 0, 0))
    with pytest.raises(InvalidInput, match="correct"):
        ap.on_canary_stats(CHAMPION, {"requests": 4, "errors": 0, "labelled": 1})


CHALLENGER = arm(1200, 4, 1000, 830)  # accuracy 0.83 against 0.85, errors 0.33 % against 0.2 %


def test_on_accuracy_a_less_accurate_challenger_is_not_shown_non_inferior(ap, window):
    to_canary(ap, window)
    d = ap.on_canary_stats(CHAMPION, CHALLENGER)
    assert d.action == "none" and not d.evidence["test"]["passed"]


def test_on_error_rate_the_same_challenger_is_compared_on_its_errors(db, window, clock):
    ap = Autopilot(db, policy_dict(promotion={"metric": "error_rate", "margin": 0.005}), clock=clock)
    to_canary(ap, window)
    d = ap.on_canary_stats(CHAMPION, CHALLENGER)
    test = d.evidence["test"]
    assert (test["p_challenger"], test["p_champion"]) == (4 / 1200, 6 / 3000)
    # For an error rate a rise is worse: z = (p_champ - p_chal + margin) / se.
    se = math.sqrt(4 / 1200 * (1 - 4 / 1200) / 1200 + 0.002 * 0.998 / 3000)
    assert math.isclose(test["z"], (0.002 - 4 / 1200 + 0.005) / se) and test["passed"]
    assert d.action == "promote" and "error_rate 0.0033 vs 0.0020" in d.reason


def test_the_promotion_metric_is_one_the_arms_can_support():
    with pytest.raises(InvalidInput) as e:
        load_policy(policy_dict(promotion={"metric": "roc_auc"}))
    assert "promotion.metric" in str(e.value) and "'accuracy'" in str(e.value) and "'error_rate'" in str(e.value)


def test_roll_back_on_errors(ap, window):
    to_canary(ap, window)
    assert ap.on_canary_stats(CHAMPION, arm(100, 3, 0, 0)).action == "none"  # 3 % but within the budget of 6
    d = ap.on_canary_stats(CHAMPION, arm(120, 7, 0, 0))
    assert d.action == "rollback" and "7 errors in 120 requests" in d.reason
    assert d.evidence["challenger_error_rate"] == 7 / 120 and ap.state()["last_outcome"] == "rolled_back"


def test_roll_back_on_regression(ap, window):
    to_canary(ap, window)
    assert ap.on_canary_stats(CHAMPION, arm(40, 0, 40, 20)).action == "none"  # too few labels to judge yet
    d = ap.on_canary_stats(CHAMPION, arm(80, 0, 60, 42))  # 0.70 against 0.85
    assert d.action == "rollback" and "max_regression" in d.reason
    assert math.isclose(d.evidence["p_champion"] - d.evidence["p_challenger"], 0.15)


def test_roll_back_on_timeout(ap, window, clock):
    to_canary(ap, window)
    clock.tick(3599)
    assert ap.on_canary_stats(CHAMPION, arm(100, 0, 60, 51)).action == "none"
    clock.tick(1)
    d = ap.on_canary_stats(CHAMPION, arm(100, 0, 60, 51))
    assert d.action == "rollback" and "max_duration_s 3600 passed" in d.reason and "too little traffic" in d.reason
    assert ap.state()["cooldown_until"] == clock.now + 600


def test_state_survives_a_new_autopilot_mid_canary(db, ap, window, clock):
    to_canary(ap, window, version=3)
    started = clock.now
    clock.tick(100)
    ap.on_canary_stats(CHAMPION, arm(120, 0, 80, 70))
    before = ap.state()
    del ap

    clock.tick(100)
    resumed = Autopilot(db, load_policy(policy_dict()), clock=clock)
    state = resumed.state()
    assert state == {**before, "in_cooldown": False}
    assert (state["state"], state["challenger_version"], state["canary_started_at"]) == ("canary", 3, started)
    assert state["job_id"] == "raysubmit_1" and state["challenger_stats"] == arm(120, 0, 80, 70)
    clock.tick(3400)  # the canary's clock kept running across the restart
    d = resumed.on_canary_stats(CHAMPION, arm(200, 0, 150, 120))
    assert d.action == "rollback" and d.evidence["elapsed_s"] == 3600


def test_the_decision_log_holds_evidence(ap, window, clock):
    to_canary(ap, window, version=5)
    ap.on_canary_stats(CHAMPION, arm(120, 0, 80, 70))  # none: not logged
    ap.on_canary_stats(CHAMPION, arm(1200, 0, 1000, 880))
    log = ap.decisions()
    assert [d.action for d in log] == ["promote", "start_canary", "retrain"]
    assert [d.seq for d in log] == [3, 2, 1] and all(d.model == "churn" for d in log)
    promote, start, retrain = log
    assert promote.evidence["challenger_version"] == 5 and promote.evidence["test"]["passed"] is True
    assert promote.evidence["challenger"] == arm(1200, 0, 1000, 880) and promote.state == "watching"
    assert start.evidence["job_id"] == "raysubmit_1" and start.evidence["share"] == 0.1
    assert retrain.evidence["drifted_features"] == TWO and retrain.evidence["streak"] == 2
    assert ap.decisions(limit=1) == [promote]
    with pytest.raises(InvalidInput):
        ap.decisions(limit=0)


# -- policy ------------------------------------------------------------------------------------
def test_the_example_policy_loads_and_resolves_its_training_config():
    policy = load_policy(REPO / "jobs/configs/autopilot_churn.yaml")
    assert isinstance(policy, AutopilotPolicy) and policy.model == "churn"
    assert Path(policy.retrain.training_config) == REPO / "jobs/configs/churn.yaml"
    assert Path(policy.retrain.training_config).is_file()
    assert policy.trigger.drift_features_min == 2 and policy.promotion.test == "non_inferiority"
    defaults = load_policy({"model": "churn", "retrain": {"training_config": "x.yaml"}})
    assert defaults.trigger.consecutive_windows == 2 and defaults.trigger.performance_drop == 0.05
    assert (defaults.canary.share, defaults.canary.min_requests, defaults.cooldown_s) == (0.1, 300, 3600)


def test_an_invalid_policy_is_one_error_naming_every_bad_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model: bad/name\n"
        "trigger: {consecutive_windows: 0, performance_drop: -1}\n"
        "canary: {share: 0.7}\n"
        "promotion: {test: t_test, alpha: 0.9}\n"
        "rollback: {max_error_rate: 2}\n"
        "surprise: 1\n"
    )
    with pytest.raises(InvalidInput) as e:
        load_policy(path)
    message = str(e.value)
    for field in ("model", "trigger.consecutive_windows", "trigger.performance_drop", "canary.share",
                  "promotion.test", "promotion.alpha", "rollback.max_error_rate", "surprise", "retrain"):
        assert field in message, field
    assert str(path) in message
    path.write_text("- a list\n")
    with pytest.raises(InvalidInput, match="must hold a mapping"):
        load_policy(path)
