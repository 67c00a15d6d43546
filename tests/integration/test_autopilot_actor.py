"""The `autopilot` actor on a real Ray cluster: drift reports in the metadata DB -> a retrain decision ->
a real Ray job (through the dashboard's job server) -> the job fails -> the cycle aborts, audited, with the
champion untouched; and the state survives the actor being killed mid-retrain.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import ray

from aiinfra.autopilot.actor import get_autopilot_actor
from aiinfra.config import MonitoringSettings
from aiinfra.monitoring.core import DriftMonitor
from aiinfra.storage import open_metadata_db

MODEL = "apfail"


def _drift_windows(config, windows: int) -> None:
    """Store `windows` drifted windows for MODEL, as its monitor would."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"x1": rng.normal(0, 1, 500), "x2": rng.normal(0, 1, 500)})
    db = open_metadata_db(config.metadata_url)
    monitor = DriftMonitor(db, MODEL, reference, numeric=["x1", "x2"], categorical=[],
                           settings=MonitoringSettings(window_rows=200, min_rows=100))
    shifted = pd.DataFrame({"x1": rng.normal(2, 1, 200 * windows), "x2": rng.normal(2, 1, 200 * windows)})
    reports = monitor.observe(shifted.to_dict("records"))
    assert [r.status for r in reports] == ["drift"] * windows


def _wait(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError, ValueError):
            value = None  # restarting
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_a_failing_retrain_job_aborts_the_cycle_and_survives_an_actor_restart(platform, platform_config, tmp_path):
    policy = {
        "model": MODEL,
        "trigger": {"drift_features_min": 2, "consecutive_windows": 2, "performance_drop": None},
        "cooldown_s": 3600,
        "retrain": {"training_config": str(tmp_path / "missing.yaml"), "recent_rows": 100},
    }
    actor = get_autopilot_actor(platform_config, poll_interval_s=0.5)
    try:
        state = ray.get(actor.watch.remote(policy), timeout=60)
        assert state["state"] == "watching"
        _drift_windows(platform_config, 2)

        def status():
            return ray.get(get_autopilot_actor(platform_config, create=False).status.remote(MODEL), timeout=60)["models"][MODEL]

        # The retrain is decided and submitted as a Ray job; kill the actor while it waits on the job.
        running = _wait(lambda: (s := status())["state"]["job_id"] and s, "the retrain job's submission")
        job_id = running["state"]["job_id"]
        assert job_id.startswith(f"retrain-{MODEL}-") and running["state"]["state"] == "retraining"
        assert running["decisions"][0]["action"] == "retrain"
        pid = ray.get(actor.pid.remote())
        ray.kill(actor, no_restart=False)

        # The restarted actor reloads the policy and the state from the DB and follows the same job.
        done = _wait(lambda: (s := status())["state"]["state"] == "watching" and s, "the cycle's end", timeout=180)
        assert ray.get(get_autopilot_actor(platform_config, create=False).pid.remote()) != pid
        abort = done["decisions"][0]
        assert abort["action"] == "abort" and abort["evidence"]["job_id"] == job_id
        assert "FAILED" in abort["evidence"]["error"] and "missing.yaml" in abort["evidence"]["error"]
        assert done["state"]["in_cooldown"] and done["state"]["last_outcome"] == "aborted"
        assert [d["action"] for d in done["decisions"]] == ["abort", "retrain"]  # each decided once
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(f"http://{ray._private.worker.get_dashboard_url()}")
        assert str(client.get_job_status(job_id)) in ("FAILED", "JobStatus.FAILED")
    finally:
        handle = get_autopilot_actor(platform_config, create=False)
        ray.get(handle.unwatch.remote(MODEL), timeout=60)
        ray.kill(handle, no_restart=True)
