"""A sharded monitor on a real Ray cluster: two `monitor:<model>` actors, one client, one set of answers.

The client splits sampled rows and labels by request id; the later shard hands its joins to shard 0 on
its own ticker (an actor-to-actor call), and shard 0 then reports every label, as one monitor would.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import ray

from aiinfra.inference.columns import to_columns
from aiinfra.monitoring.actor import monitor_spec
from aiinfra.monitoring.client import MonitorClient
from aiinfra.monitoring.profile import build_profile, write_profile
from aiinfra.monitoring.shards import shard_of
from aiinfra.registry.types import FieldSpec
from aiinfra.service import find_actor

MODEL = "sharded"
INPUTS = [FieldSpec(name="x", dtype="float64"), FieldSpec(name="plan", dtype="string")]


@pytest.fixture
def sharded_config(platform, platform_config, tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(0, 1, 2000), "plan": rng.choice(["basic", "premium"], 2000)})
    p = 1 / (1 + np.exp(-2 * frame["x"].to_numpy()))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"not loaded: the profile carries the scores")
    write_profile(build_profile(frame, INPUTS, task="binary", class_labels=[0, 1], outputs=p,
                                labels=(rng.random(2000) < p).astype(np.int64), source="test"), model_dir)
    platform.registry.register(MODEL, model_dir, metrics={"accuracy": 0.8},
                               signature={"inputs": [f.model_dump() for f in INPUTS],
                                          "outputs": [{"name": "probability", "dtype": "float64"}]},
                               lineage={"dataset_version": "d@1"})
    config = platform_config.model_copy(update={"monitoring": platform_config.monitoring.model_copy(
        update={"shards": 2, "window_rows": 500, "min_rows": 100})})
    yield config
    for k in (0, 1):  # stop exactly the actors this test started
        handle = find_actor(monitor_spec(MODEL, k), config)
        if handle is not None:
            ray.kill(handle, no_restart=True)


def test_two_monitor_actors_join_their_requests_and_shard_zero_reports_all(sharded_config):
    client = MonitorClient.for_model(sharded_config, MODEL)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(0, 1, 1000), "plan": rng.choice(["basic", "premium"], 1000)})
    p = 1 / (1 + np.exp(-2 * frame["x"].to_numpy()))
    ids = [f"req-{i}" for i in range(1000)]
    assert {shard_of(r, 2) for r in ids} == {0, 1}
    reports = client.observe(to_columns(frame.to_dict("records")), p.tolist(), ids, [int(v >= 0.5) for v in p],
                             [1] * 1000, None, None)
    assert [r["rows"] for r in reports] == [500, 500]  # shard 0 cut the windows from every row
    labels = (rng.random(1000) < p).astype(int)
    out = client.feedback([{"request_id": r, "label": int(y)} for r, y in zip(ids, labels)])
    assert out["matched"] == 1000 and out["unknown"] == 0

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        arms = client.arm_stats()["arms"].get("1", {})
        if arms.get("labelled") == 1000:
            break
        time.sleep(0.25)
    assert arms == {"requests": 1000, "errors": 0, "labelled": 1000,
                    "correct": int(np.sum((p >= 0.5) == (labels == 1)))}
    status = client.status()
    assert status["shards"] == 2 and status["concept"]["rows"] == 1000
    assert len(client.labelled_rows()) == 1000
    assert find_actor(monitor_spec(MODEL, 1), sharded_config) is not None
