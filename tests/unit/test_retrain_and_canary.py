"""The plain pieces of the loop: production rows shaped as training data, stored policies, the live canary."""

from __future__ import annotations

import pandas as pd
import pytest

from aiinfra.autopilot.core import Autopilot, load_policies, remove_policy, save_policy
from aiinfra.autopilot.policy import load_policy
from aiinfra.errors import InvalidInput
from aiinfra.pipelines.retrain import production_frame
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
