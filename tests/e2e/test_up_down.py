"""`aiinfra up`, `status`, jobs through `ray job submit`'s client, and `aiinfra down`, as a user runs them.

The cluster this test starts is the only one it stops: `down` ends the processes of that
session and nothing else.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Ray reads its auth mode at import: the cluster `up` starts requires Ray's token.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import psutil  # noqa: E402
import pytest  # noqa: E402
from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402

from aiinfra.data.synthetic import make_customers  # noqa: E402

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aiinfra(env: dict, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "aiinfra"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def wait_for(client: JobSubmissionClient, job_id: str, timeout_s: float = 240) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s}s")


class UpCluster:
    """The cluster `aiinfra up` starts for this module, started again if a test stopped it (`down`), so each
    test passes alone and in any order; the module's end stops it."""

    def __init__(self, home: Path) -> None:
        gcs, self.dashboard_port, serve_port = _free_port(), _free_port(), _free_port()
        self.gcs_port = gcs
        self.home = home
        self.env = {**os.environ, "AIINFRA_HOME": str(home), "AIINFRA_SERVE_PORT": str(serve_port)}
        self.env.pop("RAY_ADDRESS", None)
        self.first_up: str | None = None

    def ensure(self) -> dict:
        if not (self.home / "cluster.json").exists():
            if self.first_up is None:
                none = aiinfra(self.env, "down")
                assert none.returncode == 0 and "nothing to stop" in none.stdout  # no cluster: no error
            started = aiinfra(self.env, "up", "--port", str(self.gcs_port), "--dashboard-port", str(self.dashboard_port))
            assert started.returncode == 0, started.stderr[-3000:]
            self.first_up = self.first_up or started.stdout
        info = json.loads((self.home / "cluster.json").read_text())
        return {"env": self.env, "home": self.home, "info": info, "dashboard": f"http://127.0.0.1:{self.dashboard_port}",
                "up": self.first_up}


@pytest.fixture(scope="module")
def up_cluster(tmp_path_factory):
    cluster = UpCluster(tmp_path_factory.mktemp("up-home"))
    yield cluster
    aiinfra(cluster.env, "down")


@pytest.fixture
def cluster(up_cluster):
    return up_cluster.ensure()


@pytest.fixture(scope="module")
def customers(up_cluster, tmp_path_factory):
    """`customers` ingested by a job through `ray job submit`'s client: (client, job id, version)."""
    c = up_cluster.ensure()
    csv = tmp_path_factory.mktemp("data") / "customers.csv"
    make_customers(2_000, seed=4).to_csv(csv, index=False)
    client = JobSubmissionClient(c["dashboard"])
    ok = client.submit_job(
        entrypoint=f"python jobs/ingest.py customers {csv} --spec jobs/configs/customers_spec.yaml",
        runtime_env={"working_dir": str(ROOT), "env_vars": {"AIINFRA_HOME": str(c["home"])}},
        submission_id=f"ingest-{os.getpid()}-{time.time_ns()}",
    )
    assert wait_for(client, ok) == JobStatus.SUCCEEDED, client.get_job_logs(ok)[-3000:]
    return client, ok, client.get_job_logs(ok).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(up_cluster, customers):
    """`aiinfra train CONFIG --submit` on the cluster: the finished process."""
    c = up_cluster.ensure()
    return subprocess.run([str(BIN / "aiinfra"), "train", "tests/e2e/configs/churn_small.yaml", "--submit"],
                          cwd=ROOT, env=c["env"], capture_output=True, text=True, timeout=420)


def test_up_prints_where_everything_is_and_reuses_a_running_cluster(cluster):
    out = cluster["up"]
    assert "dashboard" in out and "serve (HTTP)" in out and str(cluster["home"] / "api_token") in out
    assert (cluster["home"] / "api_token").exists()
    again = aiinfra(cluster["env"], "up")
    assert again.returncode == 0 and "already running" in again.stdout and "reusing" in again.stdout
    status = aiinfra(cluster["env"], "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    st = json.loads(status.stdout)
    assert st["running"] and st["started_by_up"]
    assert st["services"]["registry"]["alive"] and st["services"]["feature_store"]["alive"]


def test_jobs_run_on_the_cluster_and_failures_say_why(cluster, customers, tmp_path):
    client, _, version = customers
    runtime_env = {"working_dir": str(ROOT), "env_vars": {"AIINFRA_HOME": str(cluster["home"])}}
    listed = aiinfra(cluster["env"], "data", "show", f"customers@{version}", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["row_count"] == 2_000

    bad = client.submit_job(
        entrypoint=f"python jobs/ingest.py customers {tmp_path / 'missing.csv'}",
        runtime_env=runtime_env, submission_id=f"ingest-bad-{os.getpid()}-{time.time_ns()}",
    )
    assert wait_for(client, bad) == JobStatus.FAILED
    assert "no such file" in client.get_job_logs(bad)


def test_training_job_is_submitted_streams_its_logs_and_registers_a_model(cluster, trained):
    """`aiinfra train CONFIG --submit`: jobs/train.py runs on the cluster (this checkout is its working
    directory), finds the platform services by name, and registers with lineage to its run."""
    submitted = trained
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    assert "SUCCEEDED" in submitted.stderr and "[5/5] register with lineage and alias" in submitted.stderr
    assert "train xgboost with Ray Train (data-parallel boosting, 2 worker(s))" in submitted.stderr
    version = json.loads(aiinfra(cluster["env"], "models", "show", "churn-job@champion", "--json").stdout)
    assert version["version"] == 1 and version["metrics"]["roc_auc"] > 0.6
    assert "model.ubj" in version["files"] and version["params"]["family"] == "xgboost"
    run = json.loads(aiinfra(cluster["env"], "runs", "show", version["lineage"]["run_id"], "--json").stdout)
    assert run["status"] == "finished" and run["dataset_versions"][0].startswith("customers@")
    steps = [e["step"] for e in run["epochs"]]  # one per boosting round, early stopping at most 40
    assert steps == list(range(len(steps))) and 10 < len(steps) <= 40

    refused = subprocess.run([str(BIN / "aiinfra"), "train", str(ROOT / "jobs/configs/churn.yaml"), "--submit"],
                             cwd=ROOT / "tests", env=cluster["env"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "outside this directory" in refused.stderr


def test_serve_deploy_puts_a_registered_model_on_http_and_status_shows_it(cluster, trained):
    """`aiinfra serve deploy NAME@ALIAS` on the `up` cluster; the API token `up` made answers."""
    import httpx

    assert trained.returncode == 0, trained.stderr[-3000:]

    deployed = aiinfra(cluster["env"], "serve", "deploy", "churn-job@champion", "--json")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    info = json.loads(deployed.stdout)
    token = (cluster["home"] / "api_token").read_text().strip()
    row = {"tenure_months": 3.0, "monthly_charges": 120.0, "support_calls": 4, "plan": "basic", "region": "north"}
    r = httpx.post(info["url"], json={"instances": [row]}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "churn-job" and r.json()["version"] == 1
    st = json.loads(aiinfra(cluster["env"], "serve", "status", "--json").stdout)
    assert st["apps"]["aiinfra"]["serving"]["model"] == "churn-job"
    missing = aiinfra(cluster["env"], "serve", "deploy", "no-such-model@champion")
    assert missing.returncode == 2 and "no-such-model" in missing.stderr


def test_batch_predict_scores_a_dataset_with_the_trained_trees(cluster, customers, trained):
    """`aiinfra predict` on the `up` cluster: the tree model scores every row, versioned with lineage."""
    assert trained.returncode == 0, trained.stderr[-3000:]
    _, _, version = customers
    scored = aiinfra(cluster["env"], "predict", "churn-job@champion", f"customers@{version}", "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    result = json.loads(scored.stdout)
    assert result["rows"] == 2_000 and result["model"] == "churn-job@1"
    shown = json.loads(aiinfra(cluster["env"], "data", "show", result["output"], "--json").stdout)
    assert shown["lineage"]["model"] == "churn-job@1" and shown["row_count"] == 2_000


def test_down_stops_exactly_that_cluster(cluster):
    marker = Path(cluster["info"]["session_dir"]).name
    stopped = aiinfra(cluster["env"], "down")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert left == []
    assert not (cluster["home"] / "cluster.json").exists()
    # Ray's pointer to "the latest cluster" must not name the dead one: a later ray.init() would hang on it
    pointer = Path(cluster["info"]["session_dir"]).parent / "ray_current_cluster"
    assert not pointer.exists() or not pointer.read_text().strip().endswith(f":{cluster['info']['port']}")
    st = json.loads(aiinfra(cluster["env"], "status", "--json").stdout)
    assert not st["running"]
