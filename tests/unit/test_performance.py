"""Performance monitoring: labels joined to served predictions by request id, late or never."""

from __future__ import annotations

import pytest

from aiinfra.monitoring.performance import PerformanceTracker

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store


def test_labels_join_by_request_id_and_rolling_metrics_compare_with_the_baseline():
    t = PerformanceTracker("binary", [0, 1], {"accuracy": 0.8, "roc_auc": 0.9})
    t.record(["a", "b", "c", "d"], [0.9, 0.2, 0.7, 0.4])
    out = t.feedback([{"request_id": "a", "label": 1}, {"request_id": "b", "label": 0},
                      {"request_id": "c", "label": 0}, {"request_id": "zzz", "label": 1}])
    assert out == {"matched": 3, "unknown": 1, "invalid": 0, "refused": 0}
    snap = t.snapshot()
    assert snap["labelled"] == 3 and snap["pending"] == 1
    assert snap["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert snap["delta"]["accuracy"] == pytest.approx(2 / 3 - 0.8)
    assert snap["metrics"]["roc_auc"] == pytest.approx(1.0)  # the one positive (0.9) outranks both negatives
    t.feedback([{"request_id": "a", "label": 1}])  # a second label for the same request: already joined
    assert t.counts["unknown"] == 2


def test_a_multi_row_request_takes_one_label_per_row_and_wrong_labels_are_invalid():
    t = PerformanceTracker("multiclass", ["cat", "dog", "eel"], {"accuracy": 0.5})
    t.record(["r1", "r1", "r2"], [0.9, 0.8, 0.6], predicted=["cat", "dog", "eel"])
    assert t.feedback([{"request_id": "r1", "labels": ["cat"]}])["invalid"] == 1  # one label for two rows
    assert t.feedback([{"request_id": "r2", "label": "unicorn"}])["invalid"] == 1  # not a class of the model
    assert t.feedback([{"request_id": "r1", "labels": ["cat", "eel"]}])["matched"] == 1
    assert t.snapshot()["metrics"]["accuracy"] == pytest.approx(0.5)


def test_regression_errors_and_the_oldest_pending_predictions_are_forgotten_first():
    t = PerformanceTracker("regression", [], {"rmse": 1.0}, max_pending=2)
    t.record(["a", "b", "c"], [1.0, 2.0, 3.0])
    assert t.counts["forgotten"] == 1
    assert t.feedback([{"request_id": "a", "label": 0.0}])["unknown"] == 1  # forgotten
    t.feedback([{"request_id": "b", "label": 4.0}, {"request_id": "c", "label": "x"}])
    snap = t.snapshot()
    assert snap["metrics"] == {"rmse": pytest.approx(2.0), "mae": pytest.approx(2.0)}
    assert snap["counts"]["invalid"] == 1


def test_a_label_that_arrives_before_its_prediction_is_held_and_joined():
    t = PerformanceTracker("binary", [0, 1], {"accuracy": 0.8}, hold_s=60)
    assert t.feedback([{"request_id": "early", "label": 1}]) == {"matched": 0, "unknown": 1, "invalid": 0, "refused": 0}
    t.record(["early"], [0.9], versions=[3], rows=[{"x": 1.0}])
    assert t.counts["matched_late"] == 1 and t.snapshot()["labelled"] == 1
    assert t.labelled_rows()[0]["label"] == 1 and t.labelled_rows()[0]["x"] == 1.0
    assert t.arm_stats()["arms"]["3"] == {"requests": 1, "errors": 0, "labelled": 1, "correct": 1}


def test_held_labels_expire(monkeypatch):
    t = PerformanceTracker("binary", [0, 1], {}, hold_s=10)
    clock = [1000.0]
    monkeypatch.setattr("aiinfra.monitoring.performance.time.time", lambda: clock[0])
    t.feedback([{"request_id": "never", "label": 0}])
    clock[0] += 11
    t.record(["other"], [0.1])
    assert t.counts["expired"] == 1
    t.record(["never"], [0.2])  # too late: the label is gone
    assert t.counts["matched_late"] == 0 and t.snapshot()["labelled"] == 0


def test_arms_count_requests_errors_and_correct_rows_per_version_since_reset():
    t = PerformanceTracker("binary", [0, 1], {})
    t.record(["a", "a", "b"], [0.9, 0.2, 0.7], versions=[1, 1, 2], rows=[{"x": 1}, {"x": 2}, {"x": 3}])
    t.record_errors({2: 3})
    t.feedback([{"request_id": "a", "labels": [1, 1]}, {"request_id": "b", "label": 1}])
    arms = t.arm_stats()["arms"]
    assert arms["1"] == {"requests": 1, "errors": 0, "labelled": 2, "correct": 1}
    assert arms["2"] == {"requests": 1, "errors": 3, "labelled": 1, "correct": 1}
    assert [r["x"] for r in t.labelled_rows()] == [1, 2, 3] and t.labelled_rows(1)[0]["version"] == 2
    t.reset_arms()
    assert t.arm_stats()["arms"] == {}


def test_a_retried_label_after_a_late_join_is_accepted_not_counted_twice():
    t = PerformanceTracker("binary", [0, 1], {})
    t.feedback([{"request_id": "r", "label": 1}])  # before the prediction: held
    t.record(["r"], [0.8])
    assert t.feedback([{"request_id": "r", "label": 1}])["matched"] == 1  # the client's retry
    assert t.snapshot()["labelled"] == 1


def test_arms_are_stored_and_a_new_tracker_resumes_counting_from_them(metadata_url):
    """What a restarted monitor does mid-canary: load the stored arms and keep counting on top."""
    from aiinfra.monitoring.core import load_arms, save_arms
    from aiinfra.storage import open_metadata_db

    db = open_metadata_db(metadata_url)
    try:
        assert load_arms(db, "churn") is None
        t = PerformanceTracker("binary", [0, 1], {})
        t.record(["a", "b"], [0.9, 0.2], versions=[1, 2])
        t.record_errors({2: 1})
        t.feedback([{"request_id": "a", "label": 1}])
        save_arms(db, "churn", t.arm_stats())
        save_arms(db, "other", {"since": 0.0, "arms": {}})  # one row per model

        again = PerformanceTracker("binary", [0, 1], {})
        again.restore_arms(load_arms(db, "churn"))
        assert again.arm_stats() == t.arm_stats()
        again.record(["c"], [0.8], versions=[2])
        assert again.arm_stats()["arms"]["2"] == {"requests": 2, "errors": 1, "labelled": 0, "correct": 0}
        again.reset_arms()
        save_arms(db, "churn", again.arm_stats())
        assert load_arms(db, "churn")["arms"] == {} and load_arms(db, "other")["since"] == 0.0
    finally:
        db.close()


def test_a_label_from_another_token_is_refused_unless_that_token_may_label_anyone():
    t = PerformanceTracker("binary", [0, 1], {"accuracy": 0.8})
    t.record(["a", "b", "c"], [0.9, 0.2, 0.7], versions=[1, 1, 2], rows=[{"x": 1}, {"x": 2}, {"x": 3}],
             tokens=["app-1", "app-1", "app-2"])
    out = t.judge([{"request_id": "a", "label": 1, "by": "app-2", "trusted": False},  # someone else's request
                   {"request_id": "a", "label": 1, "by": "app-1", "trusted": False},  # its own
                   {"request_id": "c", "label": 0, "by": "labelling-service", "trusted": True}])
    assert out == ["refused", "matched", "matched"]
    assert t.counts["refused"] == 1 and t.arms[1]["labelled"] == 1 and t.arms[2]["labelled"] == 1
    assert [r["labelled_by"] for r in t.labelled_rows()] == ["app-1", "labelling-service"]
    assert [r["label_trusted"] for r in t.labelled_rows()] == [False, True]  # what a retrain may be judged on
    # A label that came before its prediction is judged when they meet: still refused for another's request.
    assert t.judge([{"request_id": "d", "label": 1, "by": "app-2", "trusted": False}]) == ["unknown"]
    t.record(["d"], [0.4], tokens=["app-1"])
    assert t.counts["refused"] == 2 and t.counts["matched_late"] == 0 and t.snapshot()["pending"] == 2
    # Predictions restored from a checkpoint keep who made them.
    again = PerformanceTracker("binary", [0, 1], {})
    again.import_state(t.export_state())
    assert again.judge([{"request_id": "b", "label": 0, "by": "app-2", "trusted": False},
                        {"request_id": "b", "label": 0, "by": "app-1", "trusted": False}]) == ["refused", "matched"]


def test_the_retrain_set_takes_at_most_a_share_from_any_one_labeller():
    t = PerformanceTracker("binary", [0, 1], {})
    ids = [f"r{i}" for i in range(100)]
    t.record(ids, [0.5] * 100, rows=[{"x": i} for i in range(100)], tokens=["t"] * 100)
    t.judge([{"request_id": r, "label": 1, "by": "labeller-a" if i < 80 else "labeller-b", "trusted": True}
             for i, r in enumerate(ids)])
    capped = t.labelled_rows(50, max_share=0.5)
    by = [r["labelled_by"] for r in capped]
    assert by.count("labeller-a") == 25 and by.count("labeller-b") == 20  # b's 20 all fit; a's newest 25
    assert [r["x"] for r in capped] == sorted(r["x"] for r in capped)  # still oldest first
    assert len(t.labelled_rows(50)) == 50  # no share: the newest 50, whoever labelled them


def test_roc_auc_by_rank_sums_is_scikit_learns():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from aiinfra.monitoring.statistics import roc_auc

    rng = np.random.default_rng(0)
    truth = rng.random(500) < 0.3
    scores = np.round(rng.random(500) * 0.5 + 0.3 * truth, 2)  # rounded: many ties
    assert roc_auc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(3, dtype=bool), np.array([0.1, 0.2, 0.3])))


def test_rows_joined_together_come_back_in_order_as_shipped_as_columns_or_as_dicts():
    """A call's joins are added at once (rows copied a column at a time); what a retrain reads is the same
    whether the rows were shipped as columns, from two shipments, or as dicts."""
    from aiinfra.inference.columns import to_columns

    def ship(t: PerformanceTracker, columnar: bool) -> None:
        for batch, at in (([("a", 1.0, "x"), ("a", 2.0, "y"), ("b", 3.0, "x")], 10.0), ([("c", 4.0, "z")], 20.0)):
            rows = [{"f": f, "g": g} for _, f, g in batch]
            t.record([r for r, _, _ in batch], [0.9, 0.1, 0.8][:len(batch)], versions=[7] * len(batch),
                     rows=to_columns(rows) if columnar else rows, served_at=at, tokens=["tok"] * len(batch))

    answers = []
    for columnar in (True, False):
        t = PerformanceTracker("binary", [0, 1], {"accuracy": 0.5})
        ship(t, columnar)
        outcomes = t.judge([{"request_id": "c", "label": 1, "by": "L"}, {"request_id": "a", "labels": [1, 1], "by": "M"},
                            {"request_id": "a", "labels": [0, 0]}, {"request_id": "b", "label": "maybe"}])
        assert outcomes == ["matched", "matched", "unknown", "invalid"]  # a's second label: already joined
        rows = t.labelled_rows()
        assert [(r["f"], r["g"], r["label"], r["served_at"], r["version"], r["labelled_by"]) for r in rows] == [
            (4.0, "z", 1, 20.0, 7, "L"), (1.0, "x", 1, 10.0, 7, "M"), (2.0, "y", 1, 10.0, 7, "M")]
        assert t.arms[7] == {"requests": 3, "errors": 0, "labelled": 3, "correct": 2}  # 0.1 labelled 1 is wrong
        errors = t.drain_errors()
        assert errors[:, 0].tolist() == [1.0, 1.0, 0.0] and errors[:, 1].tolist() == pytest.approx([0.1, 0.1, 0.9])
        answers.append((rows, t.snapshot()["metrics"]))
    assert answers[0] == answers[1]


def test_labelled_rows_keep_the_latest_across_many_small_joins():
    from aiinfra.inference.columns import to_columns
    from aiinfra.monitoring.labelled import MERGE_AT

    t = PerformanceTracker("binary", [0, 1], {}, max_labelled_rows=300)
    for i in range(2 * MERGE_AT + 50):  # one label a call: chunks merge instead of piling up
        t.record([f"r{i}"], [0.7], rows=to_columns([{"i": float(i)}]), served_at=float(i))
        t.feedback([{"request_id": f"r{i}", "label": 1}])
    rows = t.labelled_rows()
    assert len(rows) == 300 and [r["i"] for r in rows] == [float(i) for i in range(2 * MERGE_AT + 50 - 300, 2 * MERGE_AT + 50)]
    assert [r["i"] for r in t.labelled_rows(2)] == [float(2 * MERGE_AT + 48), float(2 * MERGE_AT + 49)]
    assert len(t._rows._chunks) <= MERGE_AT + 3


def test_per_request_values_shipped_once_per_request_record_as_per_row_lists_do():
    """A replica ships ids, versions and tokens once per request (Runs) and scores as an array."""
    import numpy as np

    from aiinfra.inference.columns import Runs, to_columns

    answers = []
    for shipped_as_runs in (True, False):
        t = PerformanceTracker("binary", [0, 1], {"accuracy": 0.5})
        ids, versions, tokens = ["a", "a", "b", "c", "c", "c"], [1, 1, 2, 1, 1, 1], ["t1", "t1", "t2", "t1", "t1", "t1"]
        scores = [0.9, 0.2, 0.6, 0.4, 0.8, 0.7]
        rows = to_columns([{"x": float(i)} for i in range(6)])
        if shipped_as_runs:
            t.record(Runs.of(ids), np.array(scores), versions=Runs.of(versions), rows=rows, tokens=Runs.of(tokens),
                     served_at=5.0)
        else:
            t.record(ids, scores, versions=versions, rows=rows, tokens=tokens, served_at=5.0)
        outcomes = t.judge([{"request_id": "a", "labels": [1, 0], "by": "t1", "trusted": False},
                            {"request_id": "b", "label": 1, "by": "t1", "trusted": False},  # t2's request
                            {"request_id": "c", "labels": [0, 1, 1]}])
        answers.append((outcomes, t.arms, t.labelled_rows(), t.snapshot()["metrics"]))
    assert answers[0] == answers[1]
    assert answers[0][0] == ["matched", "refused", "matched"]


def _canary(tracker: PerformanceTracker, version: int, n: int, *, by: str | None, trusted: bool, right: bool,
            prefix: str) -> None:
    """``n`` requests served by ``version`` with ``by``'s token, each labelled by ``by`` (right or wrong)."""
    ids = [f"{prefix}{i}" for i in range(n)]
    tracker.record(ids, [0.9] * n, versions=[version] * n, tokens=[by] * n)
    assert tracker.judge([{"request_id": rid, "label": 1 if right else 0, "by": by, "trusted": trusted}
                          for rid in ids]) == ["matched"] * n


def test_one_client_cannot_decide_a_canary_by_labelling_its_own_requests(metadata_url):
    """The attack: a client with a token that may label its own requests labels every challenger answer right
    and every champion answer wrong. Its labels count for at most max_token_share of each arm."""
    from aiinfra.monitoring.core import load_arms, save_arms
    from aiinfra.monitoring.performance import judged_arms
    from aiinfra.storage import open_metadata_db

    t = PerformanceTracker("binary", [0, 1], {})
    _canary(t, 1, 100, by="labeller", trusted=True, right=True, prefix="h1-")  # the honest labels: 80% right
    _canary(t, 1, 25, by="labeller", trusted=True, right=False, prefix="h1x-")
    _canary(t, 2, 100, by="labeller", trusted=True, right=True, prefix="h2-")
    _canary(t, 2, 25, by="labeller", trusted=True, right=False, prefix="h2x-")
    _canary(t, 1, 1000, by="attacker", trusted=False, right=False, prefix="a1-")
    _canary(t, 2, 1000, by="attacker", trusted=False, right=True, prefix="a2-")
    _canary(t, 2, 10, by="app-7", trusted=False, right=True, prefix="b2-")  # a small client: under the cap
    raw = t.arm_stats()
    assert raw["arms"]["2"]["labelled"] == 1135 and raw["tokens"]["2"] == {"attacker": [1000, 1000], "app-7": [10, 10]}
    judged = judged_arms(raw, 0.2)["arms"]
    # 125 honest + 10 small + C attacker with C = 0.2 * (135 + C): C = 33.75, 33 counted.
    assert judged["2"]["labelled"] == 125 + 10 + 33 and judged["2"]["correct"] == 100 + 10 + 33
    assert judged["2"]["capped_tokens"] == ["attacker"] and judged["2"]["labelled_all"] == 1135
    assert judged["1"]["labelled"] == 125 + 31 and judged["1"]["correct"] == 100  # C = 0.2 * (125 + C) = 31.25
    # Counted as sent, the arms' accuracies would be 0.09 against 0.98; judged, 0.64 against 0.85, near the
    # honest 0.8 of both.
    accuracy = {v: judged[v]["correct"] / judged[v]["labelled"] for v in ("1", "2")}
    assert raw["arms"]["2"]["correct"] / 1135 - raw["arms"]["1"]["correct"] / 1125 > 0.85
    assert accuracy["2"] - accuracy["1"] < 0.25 and all(abs(a - 0.8) < 0.17 for a in accuracy.values())
    assert judged_arms(raw, 1.0)["arms"]["2"]["labelled"] == 1135  # the default: nothing capped
    # Alone, a client counts for nothing on an arm: no share of it is left to the others.
    alone = PerformanceTracker("binary", [0, 1], {})
    _canary(alone, 2, 50, by="attacker", trusted=False, right=True, prefix="x-")
    assert judged_arms(alone.arm_stats(), 0.5)["arms"]["2"]["labelled"] == 0
    # A restarted monitor keeps capping: the per-token counts are stored with the arms.
    db = open_metadata_db(metadata_url)
    try:
        save_arms(db, "churn", raw)
        again = PerformanceTracker("binary", [0, 1], {})
        again.restore_arms(load_arms(db, "churn"))
        assert again.arm_stats() == raw
    finally:
        db.close()


def test_a_shards_handoff_carries_each_tokens_labels_per_arm():
    zero = PerformanceTracker("binary", [0, 1], {})
    one = PerformanceTracker("binary", [0, 1], {}, hands_off=True)
    _canary(one, 2, 5, by="attacker", trusted=False, right=True, prefix="a-")
    zero.absorb(one.handoff())
    _canary(one, 2, 3, by="attacker", trusted=False, right=False, prefix="b-")
    zero.absorb(one.handoff())
    zero.absorb(one.handoff())  # nothing new: nothing counted twice
    assert zero.arm_stats()["tokens"] == {"2": {"attacker": [8, 5]}} and zero.arms[2]["labelled"] == 8
