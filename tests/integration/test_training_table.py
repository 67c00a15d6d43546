"""The training table built on Ray Data equals the one built in one process: the same rows on the same sides
of the split, the same holdout, the same fitted transforms (data.engine: ray against memory)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiinfra.data.spec import load_spec
from aiinfra.data.synthetic import LABEL, make_customers
from aiinfra.data.transforms import load_feature_spec
from aiinfra.demo.configs import example_config
from aiinfra.errors import InvalidInput
from aiinfra.pipelines.train import prepare_data
from aiinfra.pipelines.training_table import to_frame
from aiinfra.training.config import TrainConfig

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def table_data(platform, platform_config):
    """A customers table (with missing charges) and a second version of it as a separate feature source."""
    from aiinfra.pipelines.ingest import ingest

    tmp = Path(platform_config.home) / "raw"
    tmp.mkdir(parents=True, exist_ok=True)
    frame = make_customers(6_000, seed=21)
    frame.loc[frame.index[::11], "monthly_charges"] = np.nan
    path = tmp / "tt-customers.csv"
    frame.to_csv(path, index=False)
    spec = load_spec(example_config("customers_spec.yaml"))
    columns = {**spec.columns, "monthly_charges": spec.columns["monthly_charges"].model_copy(update={"nullable": True})}
    spec = spec.model_copy(update={"columns": columns})
    labels = ingest(platform_config, "tt_customers", str(path), spec=spec).version
    # The feature source: the same customers a second time, an hour later, with other charges.
    later = frame.assign(event_ts=frame["event_ts"] + pd.Timedelta(hours=1),
                         monthly_charges=frame["monthly_charges"] * 1.1)
    source_path = tmp / "tt-profiles.csv"
    pd.concat([frame, later]).to_csv(source_path, index=False)
    source = ingest(platform_config, "tt_profiles", str(source_path), spec=spec.model_copy(update={"key": []})).version
    return labels, source


def _config(dataset: str, engine: str, **data) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "table-test", "task": "binary",
        "data": {"dataset": dataset, "label": LABEL, "engine": engine, **data},
        "model": {"family": "tabular_mlp", "params": {"hidden": [8]}},
        "trainer": {"seed": 7},
    })


def _rows(rows, keys) -> pd.DataFrame:
    frame = rows if isinstance(rows, pd.DataFrame) else to_frame(rows)
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _same_fit(a, b) -> None:
    def walk(x, y, path):
        if isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-12, abs=1e-15), path
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


def _both(platform, cfg_memory, cfg_ray, keys):
    memory = prepare_data(platform, cfg_memory)
    ray_built = prepare_data(platform, cfg_ray)
    (dm, hm, rm, vm), (dr, hr, rr, vr) = memory, ray_built
    assert not isinstance(dr.train, pd.DataFrame)  # the Ray engine's rows stay Datasets
    assert (dr.n_train, dr.n_val) == (len(dm.train), len(dm.val))
    for a, b in ((dm.train, dr.train), (dm.val, dr.val), (hm, hr)):
        pd.testing.assert_frame_equal(_rows(a, keys), _rows(b, keys), check_like=True)
    _same_fit(dm.pre, dr.pre)
    assert (dm.class_labels, dm.left_out, vm) == (dr.class_labels, dr.left_out, vr)
    assert rm.model_dump(exclude={"data": {"engine"}}) == rr.model_dump(exclude={"data": {"engine"}})
    return memory


def test_the_point_in_time_table_and_its_time_split_are_the_same_on_ray_data(platform, table_data):
    labels, source = table_data
    view = {"name": "tt_profile", "entity": "customer_id", "timestamp": "event_ts", "source": source.name,
            "features": ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]}
    features = load_feature_spec(example_config("customers_features.yaml"))
    data = {"features": features, "feature_view": view, "label_delay_s": 1800, "slices": ["plan"]}
    (dm, hm, _, versions) = _both(platform, _config(labels.ref, "memory", **data), _config(labels.ref, "ray", **data),
                                  keys=["customer_id", "label_ts"])
    assert versions == [labels.ref, source.ref]
    # The split is by label time: every held-out row is at least as late as every training row.
    assert hm["label_ts"].min() >= pd.concat([dm.train, dm.val])["label_ts"].max()
    # As of label time (event + 30 min) the later profile is not yet known: the first snapshot's charges.
    assert dm.train["monthly_charges"].isna().any() and not dm.train["monthly_charges"].isna().all()


def test_a_random_split_with_inferred_features_is_the_same_on_ray_data(platform, table_data):
    labels, _ = table_data
    data = {"features": "auto", "split": {"holdout_fraction": 0.25, "validation_fraction": 0.15}}
    (dm, hm, _, _) = _both(platform, _config(labels.ref, "memory", **data), _config(labels.ref, "ray", **data),
                           keys=["customer_id"])
    share = len(hm) / (len(hm) + len(dm.train) + len(dm.val))
    assert share == pytest.approx(0.25, abs=0.03)


def test_the_ray_engine_names_a_missing_column(platform, table_data):
    labels, _ = table_data
    with pytest.raises(InvalidInput, match="no column"):
        prepare_data(platform, _config(labels.ref, "ray", features={"features": [
            {"column": "not_there", "steps": [{"op": "standardize"}]}]}))
