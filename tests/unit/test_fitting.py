"""fit_in_passes (statistics per batch, merged) against fit_features (one frame in memory)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from aiinfra.data.fitting import fit_in_passes, frame_passes, order_statistics
from aiinfra.data.synthetic import make_customers
from aiinfra.data.transforms import fit_features, load_feature_spec
from aiinfra.demo.configs import example_config
from aiinfra.errors import InvalidInput


def _assert_same_fit(a, b, rel=1e-12):
    """Equal fitted JSON; floats to ``rel`` (means and standard deviations are summed in another order)."""
    def walk(x, y, path):
        if isinstance(x, float) and isinstance(y, float):
            assert x == pytest.approx(y, rel=rel, abs=1e-15), path
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        else:
            assert x == y, path
    walk(json.loads(a.to_json()), json.loads(b.to_json()), "")


def _arrow(frame):
    """A frame as the lake holds it: Arrow without pandas' metadata (so no nullable extension dtypes come back)."""
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def _by_arrow_batches(frame, rows):
    """Batches as Ray Data hands them over: each slice through Arrow to pandas on its own (an int column with
    a null in one batch only is float there)."""
    table = _arrow(frame)
    parts = [table.slice(i, rows).to_pandas() for i in range(0, len(frame), rows)]

    def run(compute, merge):
        out = None
        for p in parts:
            r = compute(p)
            out = r if out is None else merge(out, r)
        return out
    return run


@pytest.mark.parametrize("rows", [7, 1000, 1_000_000])
def test_the_demo_spec_fits_the_same_in_passes(rows):
    frame = make_customers(3_000, seed=3)
    frame.loc[frame.index[::13], "monthly_charges"] = np.nan
    spec = load_feature_spec(example_config("customers_features.yaml"))
    _assert_same_fit(fit_in_passes(spec, _by_arrow_batches(frame, rows)), fit_features(_arrow(frame).to_pandas(), spec))


def test_every_fitted_step_kind_matches():
    rng = np.random.default_rng(0)
    n = 5_001
    frame = pd.DataFrame({
        "a": rng.normal(5, 2, n), "b": rng.integers(0, 7, n).astype(float), "c": rng.exponential(3, n),
        "d": rng.choice(["x", "y", "z", None], n, p=[0.5, 0.2, 0.2, 0.1]),
        "e": rng.choice(["p", "q", "r", "s"], n), "f": rng.integers(-3, 3, n), "g": rng.random(n) > 0.5,
        "when": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        "nulls": [None] * n, "const": np.full(n, 2.5),
    })
    frame.loc[frame.index[::5], ["a", "c"]] = np.nan
    frame.loc[frame.index[3], "c"] = np.inf
    spec = load_feature_spec({"features": [
        {"column": "a", "steps": [{"op": "impute", "strategy": "median"}, {"op": "standardize"}]},
        {"column": "b", "steps": [{"op": "impute", "strategy": "most_frequent"}, {"op": "min_max"}]},
        {"column": "c", "steps": [{"op": "impute", "strategy": "mean"}, {"op": "log1p"}, {"op": "impute", "strategy": "median"},
                                  {"op": "standardize"}]},
        {"column": "d", "steps": [{"op": "impute", "strategy": "most_frequent"}, {"op": "one_hot", "max_categories": 2}]},
        {"column": "e", "steps": [{"op": "ordinal"}]},
        {"column": "f", "steps": [{"op": "clip", "min": -2, "max": 1}, {"op": "bucketize", "boundaries": [0.0]}]},
        {"column": "g", "steps": [{"op": "impute", "strategy": "most_frequent"}]},
        {"column": "when", "steps": [{"op": "datetime_parts"}]},
        {"column": "nulls", "steps": [{"op": "impute", "strategy": "median"}, {"op": "standardize"}]},
        {"column": "const", "steps": [{"op": "standardize"}]},
    ]})
    whole = _arrow(frame).to_pandas()
    expected = fit_features(whole, spec)
    for rows in (333, 5_001):
        _assert_same_fit(fit_in_passes(spec, _by_arrow_batches(frame, rows)), expected)
    assert expected.input_dtypes["f"] == "int64" and expected.input_dtypes["g"] == "bool"


def test_an_integer_column_with_a_null_in_one_batch_is_float_as_in_the_whole_frame():
    frame = pd.DataFrame({"n": pd.array([1, 2, 3, 4, None, 6], dtype="Int64")})
    spec = load_feature_spec({"features": [{"column": "n", "steps": [{"op": "standardize"}]}]})
    fitted = fit_in_passes(spec, _by_arrow_batches(frame, 3))
    assert fitted.input_dtypes == fit_features(_arrow(frame).to_pandas(), spec).input_dtypes == {"n": "float64"}
    # pandas' own nullable integers stay integers, whole or in batches
    assert fit_in_passes(spec, frame_passes(frame, 3)).input_dtypes == fit_features(frame, spec).input_dtypes == {"n": "int64"}


def test_a_missing_column_and_no_rows_are_named():
    spec = load_feature_spec({"features": [{"column": "zz", "steps": [{"op": "standardize"}]}]})
    with pytest.raises(InvalidInput, match="'zz'"):
        fit_in_passes(spec, frame_passes(pd.DataFrame({"a": [1.0]})))
    with pytest.raises(InvalidInput, match="no rows"):
        fit_in_passes(spec, frame_passes(pd.DataFrame({"zz": []})))


@pytest.mark.parametrize("values", [
    np.random.default_rng(1).normal(size=20_001),
    np.concatenate([np.full(300_000, 1.5), np.random.default_rng(2).normal(size=1_000)]),  # one bin holds most rows
    np.random.default_rng(3).lognormal(0, 6, size=50_000),  # skewed: the median bin needs narrowing
])
def test_order_statistics_are_exact(values):
    frame = pd.DataFrame({"v": values})
    ranks = [0, 1, len(values) // 2, len(values) - 1]
    found = order_statistics(frame_passes(frame, 40_000), lambda df: df["v"].to_numpy(), ranks, values.min(), values.max())
    ordered = np.sort(values)
    assert [found[k] for k in ranks] == [ordered[k] for k in ranks]


def test_order_statistics_of_int64_times():
    rng = np.random.default_rng(4)
    ns = rng.integers(1_700_000_000 * 10**9, 1_800_000_000 * 10**9, 10_000, dtype=np.int64)
    frame = pd.DataFrame({"t": ns})
    ranks = [5_000, 8_000]
    found = order_statistics(frame_passes(frame, 999), lambda df: df["t"].to_numpy(), ranks, int(ns.min()), int(ns.max()))
    assert [found[k] for k in ranks] == [int(np.sort(ns)[k]) for k in ranks]


# -- the split rule -----------------------------------------------------------------------------
def test_the_split_puts_every_row_on_the_same_side_whatever_the_batches():
    from aiinfra.data.splits import HOLDOUT, TRAIN, VALIDATION, SplitRule

    frame = make_customers(4_000, seed=5)
    frame.loc[frame.index[::7], "monthly_charges"] = np.nan  # int/float and nulls: hashed alike in every batch
    rule = SplitRule(0.2, 0.1, seed=0, hash_columns=tuple(frame.columns))
    whole = rule.assign(_arrow(frame).to_pandas())
    table = _arrow(frame)
    in_batches = np.concatenate([rule.assign(table.slice(i, 333).to_pandas()) for i in range(0, len(frame), 333)])
    assert (whole == in_batches).all()
    share = np.bincount(whole, minlength=3) / len(whole)
    assert share[HOLDOUT] == pytest.approx(0.2, abs=0.03) and share[VALIDATION] == pytest.approx(0.08, abs=0.02)
    assert share[TRAIN] == pytest.approx(0.72, abs=0.03)
    other_seed = SplitRule(0.2, 0.1, seed=1, hash_columns=tuple(frame.columns)).assign(frame)
    assert (other_seed != whole).mean() > 0.2
    doubled = pd.concat([frame, frame.iloc[:50]])  # a duplicated row lands where its twin does
    assert (rule.assign(doubled)[-50:] == whole[:50]).all()


def test_a_time_split_holds_out_the_latest_rows_and_rows_without_a_time():
    from aiinfra.data.splits import HOLDOUT, SplitRule, time_threshold

    rng = np.random.default_rng(6)
    t = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**5, 1_000), unit="s")
    frame = pd.DataFrame({"t": t, "x": rng.random(1_000)})
    frame.loc[frame.index[:10], "t"] = pd.NaT
    threshold = time_threshold(frame_passes(frame, 97), "t", 0.25)
    assert threshold == int(np.sort(frame["t"].dropna().astype("int64").to_numpy())[750])
    rule = SplitRule(0.25, 0.1, seed=0, hash_columns=("x",), time_column="t", time_threshold_ns=threshold)
    held = rule.assign(frame) == HOLDOUT
    assert held[:10].all()  # no time: held out
    assert frame["t"][held].dropna().min() >= frame["t"][~held].max()
    assert 250 <= held.sum() <= 260


def test_the_holdout_and_validation_hashes_are_independent_on_numbers_alone():
    from aiinfra.data.splits import HOLDOUT, VALIDATION, SplitRule

    frame = pd.DataFrame(np.random.default_rng(8).normal(size=(2_000, 5)), columns=list("abcde"))  # pandas' numeric hash has no key
    side = SplitRule(0.2, 0.1, seed=0, hash_columns=tuple(frame.columns)).assign(frame)
    assert np.mean(side == HOLDOUT) == pytest.approx(0.2, abs=0.03)
    assert np.mean(side == VALIDATION) == pytest.approx(0.08, abs=0.02)


def test_auto_builds_large_tables_on_ray_data():
    from types import SimpleNamespace

    from aiinfra.pipelines.train import RAY_ENGINE_ROWS, use_ray_engine

    small, large = SimpleNamespace(row_count=1_000), SimpleNamespace(row_count=RAY_ENGINE_ROWS)
    assert not use_ray_engine("auto", small) and use_ray_engine("auto", large)
    assert use_ray_engine("auto", small, source_rows=RAY_ENGINE_ROWS)  # a large feature source is joined whole in memory
    assert use_ray_engine("ray", small) and not use_ray_engine("memory", large)
