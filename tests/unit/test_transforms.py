"""Declared feature transforms: fitting, every op, JSON state, and batch == row-by-row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiinfra.data.transforms import FeaturePipeline, fit_features, load_feature_spec
from aiinfra.errors import InvalidInput

SPEC = {
    "features": [
        {"column": "amount", "steps": [{"op": "impute", "strategy": "median"}, {"op": "clip", "min": 0, "max": 100},
                                       {"op": "log1p"}, {"op": "standardize"}]},
        {"column": "score", "steps": [{"op": "min_max"}]},
        {"column": "calls", "steps": [{"op": "bucketize", "boundaries": [1, 3]}]},
        {"column": "plan", "steps": [{"op": "impute", "strategy": "most_frequent"}, {"op": "one_hot", "max_categories": 2}]},
        {"column": "region", "steps": [{"op": "ordinal"}]},
        {"column": "ts", "steps": [{"op": "datetime_parts", "parts": ["hour", "dayofweek"]}]},
    ]
}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 500
    df = pd.DataFrame({
        "amount": rng.gamma(2, 10, n),
        "score": rng.normal(0, 1, n),
        "calls": rng.poisson(2, n),
        "plan": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]),
        "region": rng.choice(["n", "s"], n),
        "ts": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 86400 * 30, n), unit="s"),
    })
    df.loc[:9, "amount"] = np.nan
    df.loc[10:14, "plan"] = None
    return df


def test_fit_learns_what_each_step_needs(data):
    pipe = fit_features(data, load_feature_spec(SPEC))
    steps = {f.column: f.steps for f in pipe.spec.features}
    assert steps["amount"][0].fitted == pytest.approx(data["amount"].median())
    x = np.log1p(np.clip(data["amount"].fillna(data["amount"].median()), 0, 100))
    assert steps["amount"][3].mean == pytest.approx(x.mean()) and steps["amount"][3].std == pytest.approx(x.std(ddof=0))
    assert steps["plan"][1].categories == ["a", "b"]  # the two most frequent
    assert steps["region"][0].categories == ["n", "s"]
    assert pipe.input_dtypes == {"amount": "float64", "score": "float64", "calls": "int64", "plan": "string",
                                 "region": "string", "ts": "timestamp"}
    assert pipe.output_names == ["amount", "score", "calls#bucket0", "calls#bucket1", "calls#bucket2",
                                 "plan=a", "plan=b", "plan=__unknown__", "region", "ts.hour", "ts.dayofweek"]


def test_batch_and_rows_agree_exactly(data):
    pipe = fit_features(data, load_feature_spec(SPEC))
    restored = FeaturePipeline.from_json(pipe.to_json())
    batch = pipe.transform(data)
    rows = data.astype(object).where(data.notna(), None).to_dict("records")
    for r in rows:
        r["ts"] = r["ts"].isoformat()  # as a client sends it
    one_by_one = np.vstack([restored.transform_rows([r]) for r in rows[:100]])
    np.testing.assert_array_equal(batch[:100], one_by_one)
    assert batch.dtype == np.float32 and not np.isnan(batch).any()


def test_unknown_and_missing_values(data):
    pipe = fit_features(data, load_feature_spec(SPEC))
    x = pipe.transform_rows([{"amount": None, "score": 0.0, "calls": 9, "plan": "zzz", "region": "w", "ts": "2026-02-01T05:00:00"}])
    names = pipe.output_names
    assert x[0, names.index("plan=__unknown__")] == 1.0
    assert x[0, names.index("region")] == 2.0  # the unknown code comes after the known ones
    assert x[0, names.index("calls#bucket2")] == 1.0 and x[0, names.index("ts.hour")] == 5.0


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"features": [{"column": "a", "steps": [{"op": "one_hot"}, {"op": "standardize"}]}]}, "must be the last step"),
        ({"features": [{"column": "a", "steps": [{"op": "standardize"}, {"op": "one_hot"}]}]}, "one_hot takes only"),
        ({"features": [{"column": "a", "steps": [{"op": "sqrt"}]}]}, "features.0.steps.0"),
        ({"features": [{"column": "a", "steps": [{"op": "log1p"}]}, {"column": "a", "steps": [{"op": "log1p"}]}]}, "more than once"),
        ({"features": []}, "features"),
    ],
)
def test_invalid_specs(spec, needle):
    with pytest.raises(InvalidInput, match=needle):
        load_feature_spec(spec)


def test_fit_and_transform_name_missing_columns(data):
    with pytest.raises(InvalidInput, match="'nope'"):
        fit_features(data, load_feature_spec({"features": [{"column": "nope", "steps": [{"op": "log1p"}]}]}))
    pipe = fit_features(data, load_feature_spec(SPEC))
    with pytest.raises(InvalidInput, match="plan"):
        pipe.transform(data.drop(columns=["plan"]))


def test_pandas_nullable_columns_and_refusals_go_the_slow_path_with_the_same_answers(data):
    """Arrow-backed and nullable columns (Ray Data hands these over) hold pd.NA, which numpy cannot
    convert: they take pd.to_numeric's path and must give what plain columns give."""
    pipe = fit_features(data, load_feature_spec(SPEC))
    plain = pipe.transform(data)
    nullable = data.copy()
    nullable["calls"] = nullable["calls"].astype("Int64")
    nullable["amount"] = nullable["amount"].astype("Float64")  # NaN becomes pd.NA
    nullable["plan"] = nullable["plan"].astype("string")  # None becomes pd.NA
    np.testing.assert_array_equal(pipe.transform(nullable), plain)
    with pytest.raises(InvalidInput, match="'amount' must be numeric"):
        pipe.transform_rows([{**data.iloc[0].to_dict(), "amount": "lots"}])
