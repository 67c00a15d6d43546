"""The feature store actor: materialization from a dataset version, point-in-time sets, restarts."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pandas as pd
import pytest
from ray_helpers import actor_pid

from aiinfra.features.actor import get_feature_store_actor
from aiinfra.pipelines.ingest import ingest


@pytest.fixture(scope="module")
def usage_version(platform_config, tmp_path_factory):
    """30 days of usage events for 300 customers, ingested through the gate."""
    rng = np.random.default_rng(3)
    n = 6_000
    df = pd.DataFrame({
        "customer_id": rng.integers(0, 300, n),
        "event_ts": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
        "calls": rng.poisson(2, n),
        "spend": rng.gamma(2, 20, n).round(2),
    })
    path = tmp_path_factory.mktemp("usage") / "usage.parquet"
    df.to_parquet(path, index=False)
    version = ingest(platform_config, "usage_events", str(path)).version
    return df, version


def expected_latest(df: pd.DataFrame, end: str) -> pd.DataFrame:
    window = df[df["event_ts"] < pd.Timestamp(end)]
    return window.loc[window.groupby("customer_id")["event_ts"].idxmax()].set_index("customer_id")


def test_materialize_incrementally_in_batches_then_serve_online(platform, usage_version):
    df, version = usage_version
    fs = platform.features
    fs.register_view({"name": "usage", "entity": "customer_id", "timestamp": "event_ts",
                      "features": ["calls", "spend"], "source": "usage_events"})
    first = fs.materialize("usage", start="2025-12-01", end="2026-01-15", batch_rows=1_000)
    assert first.batches >= 3 and first.dataset_version == version.ref  # chunked: never the whole history at once
    second = fs.materialize("usage", end="2026-02-01", batch_rows=1_000)  # incremental: from where the last one stopped
    assert second.start == pytest.approx(pd.Timestamp("2026-01-15", tz="UTC").timestamp())
    assert first.rows_in_window + second.rows_in_window == len(df)

    truth = expected_latest(df, "2026-02-01")
    ids = list(truth.index[:50]) + [10_000]
    got = fs.get_online_features("usage", ids)
    for entity, row in zip(ids[:50], got[:50]):
        assert row["status"] == "ok"
        assert row["features"] == {"calls": int(truth.loc[entity, "calls"]), "spend": float(truth.loc[entity, "spend"])}
    assert got[50]["status"] == "missing" and got[50]["features"] == {"calls": None, "spend": None}


def test_point_in_time_training_set_from_the_lake(platform, usage_version):
    df, _ = usage_version
    fs = platform.features
    fs.register_view({"name": "usage_pit", "entity": "customer_id", "timestamp": "event_ts",
                      "features": ["calls", "spend"], "source": "usage_events", "ttl": "3d"})
    entities = pd.DataFrame({"customer_id": [0, 1, 2], "event_ts": pd.to_datetime(["2026-01-10", "2026-01-20", "2026-01-01"])})
    out = fs.training_set(entities, ["usage_pit"])
    for _, row in out.iterrows():
        past = df[(df["customer_id"] == row["customer_id"]) & (df["event_ts"] <= row["event_ts"])
                  & (df["event_ts"] >= row["event_ts"] - pd.Timedelta(days=3))]
        if past.empty:
            assert pd.isna(row["calls"])
        else:
            assert row["calls"] == past.sort_values("event_ts").iloc[-1]["calls"]


def test_push_survives_sigkill_of_the_actor(platform, platform_config):
    fs = platform.features
    fs.register_view({"name": "live", "entity": "id", "timestamp": "ts", "features": ["x"], "source": "usage_events"})
    handle = get_feature_store_actor(platform_config)
    acked = {}
    for i in range(60):
        if i % 15 == 7:
            os.kill(actor_pid(handle), signal.SIGKILL)
        row = {"id": i % 20, "ts": pd.Timestamp("2026-01-01") + pd.Timedelta(minutes=i), "x": float(i)}
        fs.push("live", [{**row, "ts": str(row["ts"])}])
        acked[row["id"]] = row["x"]
    time.sleep(0.1)
    got = fs.get_online_features("live", list(acked))
    assert {g["entity"]: g["features"]["x"] for g in got} == acked
