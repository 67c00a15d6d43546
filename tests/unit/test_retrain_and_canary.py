"""The plain pieces of the loop: production rows shaped as training data, stored policies, the live canary."""

from __future__ import annotations

import pandas as pd
import pytest

from aiinfra.autopilot.core import Autopilot, load_policies, remove_policy, save_policy
from aiinfra.autopilot.policy import load_policy
from aiinfra.errors import InvalidInput
from aiinfra.pipelines.retrain import production_frame, split_production_rows
from aiinfra.storage import open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store

BASE = pd.DataFrame({
    "customer_id": pd.Series([100, 250], dtype="int64"),
    "event_ts": pd.to_datetime(["2026-01-01", "2026-02-01"]),
    "charges": [10.0, 20.0],
    "plan": ["basic", "premium"],
    "churned": pd.Series([0, 1], dtype="int64"),
})


def test_production_rows_take_the_datasets_columns_fresh_ids_and_their_serving_time():
    rows = [{"charges": 30.0, "plan": "basic", "label": "1", "served_at": 1_790_000_000.0, "version": 1},
            {"charges": 40.0, "plan": "premium", "label": 0, "served_at": 1_790_000_060.0, "version": 2}]
    out = production_frame(rows, BASE, label="churned", entity="customer_id", timestamp="event_ts")
    assert list(out.columns) == list(BASE.columns)
    assert out["customer_id"].tolist() == [251, 252]  # after the largest id: no key collides
    assert out["churned"].tolist() == [1, 0] and out["churned"].dtype == "int64"  # "1" became 1
    assert out["event_ts"].iloc[1] - out["event_ts"].iloc[0] == pd.Timedelta(seconds=60)
    assert out["event_ts"].dt.tz is None  # like the dataset's naive timestamps


def test_a_dataset_column_production_rows_cannot_fill_is_named():
    rows = [{"charges": 30.0, "label": 1, "served_at": 0.0}]
    with pytest.raises(InvalidInput, match="'plan'"):
        production_frame(rows, BASE, label="churned", entity="customer_id", timestamp="event_ts")


def test_a_dataset_key_gets_fresh_ids_when_the_model_has_no_feature_view():
    rows = [{"charges": 30.0, "plan": "basic", "label": 1, "served_at": 1_790_000_000.0}]
    with pytest.raises(InvalidInput, match="'customer_id'"):
        production_frame(rows, BASE, label="churned", entity=None, timestamp="event_ts")
    out = production_frame(rows, BASE, label="churned", entity=None, timestamp="event_ts", keys=("customer_id",))
    assert out["customer_id"].tolist() == [251]



def _labelled(n: int, *, trusted: bool, by: str, start: float = 0.0) -> list[dict]:
    return [{"charges": float(i), "label": 1, "served_at": start + i, "labelled_by": by, "label_trusted": trusted}
            for i in range(n)]


def test_the_retrain_is_judged_on_the_newest_trusted_rows_and_never_on_a_clients_own_labels():
    honest = _labelled(1000, trusted=True, by="labeller-1")
    client = _labelled(1000, trusted=False, by="feedback-7", start=2000.0)  # newer than every trusted row
    window = split_production_rows(honest + client, reference_rows=500, holdout_fraction=0.2,
                                   min_trusted_holdout=100, max_untrusted_share=0.3)
    assert window.holdout_source == "trusted production rows"
    assert len(window.holdout) == 200 and all(r["label_trusted"] for r in window.holdout)
    assert [r["served_at"] for r in window.holdout] == [float(i) for i in range(800, 1000)]  # the newest trusted
    # Trained on: 800 trusted rows, 500 reference rows, and the newest client rows up to 30% of all that.
    kept = [r for r in window.train if not r["label_trusted"]]
    assert len(kept) == int(0.3 / 0.7 * 1300) == 557 and window.untrusted_left_out == 1000 - 557
    assert min(r["served_at"] for r in kept) == 2000.0 + 1000 - 557
    assert len(kept) / (len(window.train) + 500) <= 0.3
    assert not {id(r) for r in window.holdout} & {id(r) for r in window.train}
    assert [r["served_at"] for r in window.train] == sorted(r["served_at"] for r in window.train)


def test_with_too_few_trusted_labels_no_production_row_judges_and_a_share_of_zero_trains_on_none():
    rows = _labelled(300, trusted=True, by="admin") + _labelled(5000, trusted=False, by="feedback-7", start=400.0)
    window = split_production_rows(rows, reference_rows=400, holdout_fraction=0.2, min_trusted_holdout=100,
                                   max_untrusted_share=0.0)
    assert window.holdout == [] and window.holdout_source == "reference rows"  # 60 trusted rows: too few
    assert len(window.train) == 300 and window.untrusted == 5000 and window.untrusted_left_out == 5000
    everything = split_production_rows(rows, reference_rows=400, holdout_fraction=0.2, min_trusted_holdout=100,
                                       max_untrusted_share=1.0)
    assert len(everything.train) == 5300 and everything.untrusted_left_out == 0


def test_rows_from_an_open_endpoint_are_trusted_and_a_token_without_the_flag_is_not():
    old = [{"label": 1, "served_at": float(i), "labelled_by": "tok"} for i in range(10)]
    open_ = [{"label": 1, "served_at": float(i), "labelled_by": None} for i in range(10)]
    assert split_production_rows(old, reference_rows=0, holdout_fraction=0.5, min_trusted_holdout=1,
                                 max_untrusted_share=0.5).trusted == 0
    assert split_production_rows(open_, reference_rows=0, holdout_fraction=0.5, min_trusted_holdout=1,
                                 max_untrusted_share=0.5).trusted == 10


POLICY = {"model": "churn", "retrain": {"training_config": "/configs/churn.yaml"},
          "canary": {"share": 0.25, "min_requests": 10, "min_labelled": 10}}


def test_policies_are_stored_replaced_and_removed(metadata_url):
    db = open_metadata_db(metadata_url)
    save_policy(db, load_policy(POLICY))
    save_policy(db, load_policy({**POLICY, "cooldown_s": 5}))
    [stored] = load_policies(db)
    assert stored.model == "churn" and stored.cooldown_s == 5
    assert remove_policy(db, "churn") and load_policies(db) == [] and not remove_policy(db, "churn")


def test_the_state_names_the_policys_share_only_while_a_canary_runs(metadata_url):
    db = open_metadata_db(metadata_url)
    pilot = Autopilot(db, POLICY)
    assert pilot.state()["canary_share"] is None
    pilot.on_drift_report({"model": "churn", "window_id": 1, "status": "drift", "drifted_features": ["a"]})
    pilot.on_drift_report({"model": "churn", "window_id": 2, "status": "drift", "drifted_features": ["a"]})
    assert pilot.state()["state"] == "retraining"
    pilot.retrain_submitted("job-1")
    pilot.retrain_finished(True, 7)
    assert (pilot.state()["challenger_version"], pilot.state()["canary_share"]) == (7, 0.25)
    pilot.on_canary_stats({"requests": 50, "errors": 0, "labelled": 50, "correct": 40},
                          {"requests": 10, "errors": 5, "labelled": 10, "correct": 8})  # error budget blown
    assert pilot.decisions(1)[0].action == "rollback" and pilot.state()["canary_share"] is None
