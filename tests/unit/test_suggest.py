"""`features: auto` without Ray: what the rules infer from a profile, what they leave out and why."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from aiinfra.data.suggest import profile_frame, suggest_features
from aiinfra.data.synthetic import make_breast_cancer, make_customers
from aiinfra.data.transforms import FeatureSpec, fit_features
from aiinfra.errors import InvalidInput
from aiinfra.training.config import load_train_config


def _mixed(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "order_id": np.arange(n),                                         # id-like by name
        "session": [f"s{i}" for i in range(n)],                           # id-like: distinct in every row
        "amount": rng.normal(50, 10, n),
        "qty": rng.integers(1, 5, n),
        "vip": rng.random(n) < 0.2,
        "country": rng.choice(["de", "fr", "it"], n),
        "city": [f"c{i % 60}" for i in range(n)],                         # 60 distinct: ordinal, not one-hot
        "constant": np.full(n, 7.0),
        "empty": [None] * n,
        "seen_at": pd.date_range("2026-01-01", periods=n, freq="h"),
        "label": rng.integers(0, 2, n),
    })


def test_each_kind_of_column_gets_its_transform_and_the_rest_a_reason():
    s = suggest_features(profile_frame(_mixed()), label="label", keys=[], source="t")
    steps = {f.column: [st.op for st in f.steps] for f in s.spec.features}
    assert steps == {
        "amount": ["impute", "standardize"], "qty": ["impute", "standardize"], "vip": ["impute"],
        "country": ["one_hot"], "city": ["ordinal"], "seen_at": ["datetime_parts"],
    }
    assert s.left_out["label"] == "the label"
    assert "id-like" in s.left_out["order_id"] and "id-like" in s.left_out["session"]
    assert "constant" in s.left_out["constant"] and s.left_out["empty"] == "always null"


def test_tree_families_skip_the_scaling_and_keys_and_exclusions_are_left_out():
    s = suggest_features(profile_frame(_mixed()), label="label", keys=["qty"], exclude={"seen_at": "the split's time column"},
                         for_trees=True, max_one_hot=100)
    steps = {f.column: [st.op for st in f.steps] for f in s.spec.features}
    assert steps["amount"] == ["impute"] and steps["city"] == ["one_hot"]  # 60 <= 100
    assert s.left_out["qty"] == "a key column of the dataset" and s.left_out["seen_at"] == "the split's time column"


def test_the_suggestion_fits_and_reads_back_as_yaml():
    frame = _mixed()
    s = suggest_features(profile_frame(frame), label="label")
    text = s.to_yaml()
    assert "# left out: order_id: id-like" in text
    again = FeatureSpec.model_validate(yaml.safe_load(text))
    assert again == s.spec
    pre = fit_features(frame, again)
    assert pre.transform(frame.head(5)).shape[0] == 5
    assert pre.input_dtypes["vip"] == "bool" and pre.input_dtypes["seen_at"] == "timestamp"


def test_no_usable_column_is_refused_naming_each_reason():
    frame = pd.DataFrame({"id": np.arange(50), "flat": np.ones(50), "label": np.arange(50) % 2})
    with pytest.raises(InvalidInput) as info:
        suggest_features(profile_frame(frame), label="label", source="tiny@1")
    message = info.value.message
    assert "no usable column in tiny@1" in message and "id: id-like" in message and "flat: constant" in message


def test_the_stored_profile_of_a_version_and_a_frame_suggest_the_same():
    """The CLI reads the version's stored profile, a training run profiles its rows: one set of rules."""
    customers = make_customers(400, seed=2)
    from_frame = suggest_features(profile_frame(customers), label="churned", keys=["customer_id"])
    names = [f.column for f in from_frame.spec.features]
    assert names == ["event_ts", "tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    cancer = suggest_features(profile_frame(make_breast_cancer()), label="malignant")
    assert len(cancer.spec.features) == 30 and "row_id" in cancer.left_out


def test_a_config_may_say_features_auto():
    raw = {"name": "bc", "task": "binary", "data": {"dataset": "breast_cancer", "label": "malignant", "features": "auto"}}
    cfg = load_train_config(raw)
    assert cfg.data.features == "auto"
    with pytest.raises(InvalidInput, match="cannot read feature spec .*autox"):  # any other string is a path
        load_train_config({**raw, "data": {**raw["data"], "features": "autox"}})


def test_an_integer_id_with_a_null_is_still_left_out():
    frame = pd.DataFrame({"customer_id": [1.0, 2.0, None] * 20, "x": np.arange(60.0), "label": np.arange(60) % 2})
    s = suggest_features(profile_frame(frame), label="label")  # pandas made the ids floats
    assert "id-like" in s.left_out["customer_id"] and [f.column for f in s.spec.features] == ["x"]


def test_a_column_of_mixed_value_types_is_named_not_a_raw_arrow_error():
    frame = pd.DataFrame({"code": [1, "x", None], "amount": [1.0, 2.0, 3.0]})
    with pytest.raises(InvalidInput, match=r"column\(s\) code \(int, str\) mix value types"):
        profile_frame(frame)


def test_a_date_gets_no_hour_and_an_always_null_timestamp_is_left_out():
    import datetime as dt

    frame = pd.DataFrame({"day": [dt.date(2026, 1, i + 1) for i in range(30)],
                          "never": pd.Series([pd.NaT] * 30, dtype="datetime64[ns]"),
                          "x": np.arange(30.0), "y": [0, 1] * 15})
    profile = profile_frame(frame)
    assert (profile.columns["never"].count, profile.columns["never"].nulls) == (0, 30)
    s = suggest_features(profile, label="y")
    assert s.left_out["never"] == "always null"
    parts = {f.column: f.steps[-1] for f in s.spec.features}
    assert parts["day"].parts == ["dayofweek", "month"]
