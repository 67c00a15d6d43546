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
        gcs, self.dashboard_port, serve_port, self.grpc_port = _free_port(), _free_port(), _free_port(), _free_port()
        self.gcs_port = gcs
        self.home = home
        # The OIP gRPC service too (off by default): `up` starts Serve with it.
        self.env = {**os.environ, "AIINFRA_HOME": str(home), "AIINFRA_SERVE_PORT": str(serve_port),
                    "AIINFRA_SERVE_GRPC_PORT": str(self.grpc_port)}
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
                "up": self.first_up, "grpc": f"127.0.0.1:{self.grpc_port}"}


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
    assert st["apps"]["aiinfra"]["serving"]["models"]["churn-job"]["model"] == "churn-job"
    # The same model over OIP v2 gRPC (Serve's gRPC proxy, which `up` started on AIINFRA_SERVE_GRPC_PORT),
    # with Triton's client, as a team's existing client code would call it.
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(cluster["grpc"])
    inputs = []
    for name, value in row.items():
        datatype = "BYTES" if isinstance(value, str) else ("INT64" if isinstance(value, int) else "FP64")
        t = grpcclient.InferInput(name, [1], datatype)
        t.set_data_from_numpy(np.array([value.encode() if isinstance(value, str) else value],
                                       dtype=object if datatype == "BYTES" else None))
        inputs.append(t)
    answer = client.infer("churn-job", inputs, headers={"authorization": f"Bearer {token}"})
    assert answer.as_numpy("probability")[0] == pytest.approx(r.json()["predictions"][0]["probability"], abs=1e-6)
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


def test_the_tree_champion_retrains_on_its_labelled_production_rows(cluster, trained):
    """`aiinfra retrain` (the job the autopilot submits) for an XGBoost champion: the rows it served, labelled
    through /feedback, join its reference data in a new dataset version; the retrained trees are gated against
    the champion and registered without an alias (the autopilot canaries them)."""
    import httpx

    assert trained.returncode == 0, trained.stderr[-3000:]
    env = cluster["env"]
    deployed = aiinfra(env, "serve", "deploy", "churn-job@champion", "--json")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    url = json.loads(deployed.stdout)["url"]
    base = url.split("/predict/")[0]
    auth = {"Authorization": f"Bearer {(cluster['home'] / 'api_token').read_text().strip()}"}
    served = make_customers(60, seed=21)
    cols = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    asked = []
    for row, label in zip(served[cols].to_dict("records"), served["churned"]):
        r = httpx.post(url, json={"instances": [row]}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        asked.append((r.json()["request_id"], int(label)))
    items = [{"request_id": rid, "label": label} for rid, label in asked]
    deadline, accepted = time.monotonic() + 90, 0
    while time.monotonic() < deadline and accepted < 30:  # served requests reach the monitor within seconds
        time.sleep(2)
        r = httpx.post(f"{base}/feedback/churn-job", json={"items": items}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        accepted = max(accepted, r.json()["accepted"])
    assert accepted >= 30, r.text
    # A client with a `feedback` token labels its own requests, every label flipped: accepted, but as its own word.
    made = aiinfra(env, "token", "create", "--role", "feedback", "--model", "churn-job")
    assert made.returncode == 0, made.stderr
    client = {"Authorization": f"Bearer {made.stdout.strip()}"}
    time.sleep(0.6)  # the server looks up a new token id at most twice a second
    flipped = []
    for row, label in zip(served[cols].to_dict("records")[:20], served["churned"][:20]):
        r = httpx.post(url, json={"instances": [row]}, headers=client, timeout=30)
        assert r.status_code == 200, r.text
        flipped.append({"request_id": r.json()["request_id"], "label": 1 - int(label)})
    deadline, taken = time.monotonic() + 90, 0
    while time.monotonic() < deadline and taken < 20:
        time.sleep(2)
        r = httpx.post(f"{base}/feedback/churn-job", json={"items": flipped}, headers=client, timeout=60)
        assert r.status_code == 200, r.text
        taken = max(taken, r.json()["accepted"])
    assert taken == 20, r.text
    retrained = subprocess.run([str(BIN / "aiinfra"), "retrain", "churn-job", "--config", "tests/e2e/configs/churn_small.yaml",
                                "--max-untrusted-share", "0", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=420)
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert "the retrain's driver will hold about" in retrained.stderr  # estimated before any data was read
    result = json.loads(retrained.stdout)
    assert result["production_rows"] >= 30 and result["gate"] is not None
    # The admin's labels are trusted; the client's 20 are its own word, and a share of 0 trains on none of them.
    # 30-odd trusted rows are too few to judge on: the newest reference rows are the holdout, never a client's.
    assert result["trusted_rows"] == result["production_rows"] and result["untrusted_rows"] == 20
    assert result["untrusted_left_out"] == 20 and result["holdout"] == "reference rows"
    assert result["holdout_dataset"].startswith("customers@") and result["holdout_dataset"] != result["dataset_version"]
    version = json.loads(aiinfra(env, "models", "show", result["model"], "--json").stdout)
    assert version["params"]["family"] == "xgboost" and "champion" not in version["aliases"]
    assert version["lineage"]["retrain"]["production_rows"] == result["production_rows"]
    assert version["lineage"]["retrain"]["holdout"] == "reference rows"
    assert version["lineage"]["dataset_version"] == result["dataset_version"] != version["lineage"].get("parent")


def test_the_trained_trees_export_to_onnx_with_the_same_answers(cluster, trained, tmp_path):
    """`aiinfra models export NAME@ALIAS --format onnx`: written out and registered as the next version."""
    assert trained.returncode == 0, trained.stderr[-3000:]
    out_dir = tmp_path / "exported"
    exported = aiinfra(cluster["env"], "models", "export", "churn-job@champion", "--format", "onnx", "--out", str(out_dir),
                       "--register", "--json")
    assert exported.returncode == 0, exported.stderr[-3000:]
    result = json.loads(exported.stdout)
    assert result["max_abs_difference"] <= 1e-4 and result["rows"] > 100
    assert abs(result["variant_metric"] - result["parent_metric"]) < 1e-3
    assert (out_dir / "model.onnx").exists() and (out_dir / "preprocess.json").exists()
    version = json.loads(aiinfra(cluster["env"], "models", "show", result["model"], "--json").stdout)
    assert version["lineage"]["parent_version"] == 1 and version["lineage"]["method"] == "export:onnx"
    assert version["params"]["family"] == "onnx" and "model.onnx" in version["files"]
    # Trees have no matrix products to quantize: refused, naming why.
    refused = aiinfra(cluster["env"], "optimize", result["model"], "--quantize", "int8")
    assert refused.returncode == 2 and "tree ensembles are already compact" in refused.stderr


def test_the_trained_trees_distil_into_an_mlp_that_prunes_smaller(cluster, trained):
    """`aiinfra optimize --distill` (an MLP student on the trees' answers over their training rows) and then
    `--prune` of that student: each gated on the parent's holdout rows, registered with its lineage."""
    assert trained.returncode == 0, trained.stderr[-3000:]
    env = cluster["env"]
    distilled = aiinfra(env, "optimize", "churn-job@champion", "--distill", "--student", '{"hidden": [32, 16]}',
                        "--max-loss", "0.03", "--json")
    assert distilled.returncode == 0, distilled.stderr[-3000:]
    student = json.loads(distilled.stdout)
    assert student["parent"] == "churn-job@1" and student["parent_metric"] - student["variant_metric"] <= 0.03
    assert "trained on the teacher's answers on" in distilled.stderr
    pruned = aiinfra(env, "optimize", student["model"], "--prune", "0.5", "--max-loss", "0.03", "--json")
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    small = json.loads(pruned.stdout)
    assert small["variant_bytes"] < student["variant_bytes"] and "hidden widths [32, 16] -> [16, 8]" in pruned.stderr
    version = json.loads(aiinfra(env, "models", "show", small["model"], "--json").stdout)
    assert version["lineage"]["method"] == "prune:0.5" and version["params"]["hidden"] == [16, 8]
    assert f"churn-job@{version['lineage']['parent_version']}" == student["model"]


def test_an_onnx_model_trained_elsewhere_is_imported_quantized_served_and_batch_scored(cluster, customers, trained,
                                                                                      tmp_path):
    """A scikit-learn MLP converted with skl2onnx, as a team would bring it: `aiinfra models import`, then
    `aiinfra optimize --quantize int8`, then served over HTTP (and OIP) and batch-scored like a trained model;
    then served beside the trained trees on one endpoint, and taken off it while the trees keep answering."""
    import httpx
    import numpy as np
    import yaml
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, _, version = customers
    env = cluster["env"]
    cols = ["tenure_months", "monthly_charges", "support_calls"]
    elsewhere = make_customers(3_000, seed=11)  # not the rows it is judged on
    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0))
    clf.fit(elsewhere[cols].to_numpy(np.float32), elsewhere["churned"])
    graph = tmp_path / "churn.onnx"
    graph.write_bytes(to_onnx(clf, initial_types=[("input", FloatTensorType([None, 3]))], target_opset=17).SerializeToString())
    sig = tmp_path / "signature.yaml"
    sig.write_text(yaml.safe_dump({"task": "binary", "class_labels": [0, 1], "inputs": [
        {"name": "tenure_months", "dtype": "float64"}, {"name": "monthly_charges", "dtype": "float64"},
        {"name": "support_calls", "dtype": "int64"}]}))
    holdout = ["--holdout", f"customers@{version}", "--label", "churned", "--slice", "plan"]

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 20)
    bad = aiinfra(env, "models", "import", "churn-onnx", str(garbage), "--signature", str(sig), *holdout)
    assert bad.returncode == 2 and "garbage.onnx is not an ONNX model" in bad.stderr, bad.stderr[-2000:]

    imported = aiinfra(env, "models", "import", "churn-onnx", str(graph), "--signature", str(sig), *holdout, "--json")
    assert imported.returncode == 0, imported.stderr[-3000:]
    first = json.loads(imported.stdout)
    assert first["model"] == "churn-onnx@1" and first["alias"] == "champion" and first["metrics"]["roc_auc"] > 0.6
    assert first["producer"].startswith("skl2onnx")

    quantized = aiinfra(env, "optimize", "churn-onnx@1", "--quantize", "int8", "--json")
    assert quantized.returncode == 0, quantized.stderr[-3000:]
    q = json.loads(quantized.stdout)
    assert q["model"] == "churn-onnx@2" and q["parent_metric"] - q["variant_metric"] <= 0.01
    assert q["variant_bytes"] < q["parent_bytes"]
    assert aiinfra(env, "models", "alias", "churn-onnx", "2", "champion").returncode == 0

    deployed = aiinfra(env, "serve", "deploy", "churn-onnx@champion", "--json")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    url = json.loads(deployed.stdout)["url"]
    auth = {"Authorization": f"Bearer {(cluster['home'] / 'api_token').read_text().strip()}"}
    risky = {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6}
    calm = {"tenure_months": 60.0, "monthly_charges": 30.0, "support_calls": 0}
    r = httpx.post(url, json={"instances": [risky, calm]}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "churn-onnx" and body["version"] == 2
    assert body["predictions"][0]["probability"] > body["predictions"][1]["probability"]
    base = url.split("/predict/")[0]
    oip = httpx.post(f"{base}/v2/models/churn-onnx/infer", headers=auth, timeout=30, json={"inputs": [
        {"name": c, "shape": [1], "datatype": "INT64" if c == "support_calls" else "FP64", "data": [risky[c]]} for c in cols]})
    assert oip.status_code == 200, oip.text
    prob = {o["name"]: o for o in oip.json()["outputs"]}["probability"]["data"][0]
    # Dynamic int8 quantizes each call's activations with one scale for the whole batch, so a row's answer moves
    # slightly with its batch-mates (here 1 row against 2): about 1e-4, never near a decision.
    assert prob == pytest.approx(body["predictions"][0]["probability"], abs=1e-3)
    wrong = httpx.post(url, json={"instances": [{**risky, "support_calls": "six"}]}, headers=auth, timeout=30)
    assert wrong.status_code == 422 and "support_calls" in wrong.text
    # Its drift monitor watches the served version against the reference profile the import built.
    deadline, status = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        shown = aiinfra(env, "monitor", "status", "churn-onnx", "--json")
        status = json.loads(shown.stdout) if shown.returncode == 0 else {}
        if status.get("running") and status.get("version") == "churn-onnx@2":
            break
        time.sleep(2)
    assert status.get("version") == "churn-onnx@2", status
    assert sorted(status["features"]["numeric"]) == sorted(cols)

    scored = aiinfra(env, "predict", "churn-onnx@champion", f"customers@{version}", "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads(scored.stdout)["rows"] == 2_000

    # One endpoint, two models: `serve deploy` adds the trees beside the ONNX model (the endpoint keeps running),
    # `serve remove` takes the ONNX model off and the trees go on answering.
    assert trained.returncode == 0, trained.stderr[-3000:]
    both = aiinfra(env, "serve", "deploy", "churn-job@champion", "--json")
    assert both.returncode == 0, both.stderr[-3000:]
    assert "churn-onnx" in json.loads(both.stdout)["also_serving"]
    trees = f"{base}/predict/churn-job"
    row = {**risky, "plan": "basic", "region": "north"}
    assert httpx.post(trees, json={"instances": [row]}, headers=auth, timeout=30).status_code == 200
    st = json.loads(aiinfra(env, "serve", "status", "--json").stdout)
    assert {"churn-job", "churn-onnx"} <= set(st["apps"]["aiinfra"]["serving"]["models"])
    listed = aiinfra(env, "serve", "status")
    assert "churn-onnx" in listed.stdout and "churn-job" in listed.stdout, listed.stdout
    removed = aiinfra(env, "serve", "remove", "churn-onnx", "--json")
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert json.loads(removed.stdout)["ref"] == "churn-onnx@champion"
    assert "churn-job" in json.loads(removed.stdout)["still_serving"]
    gone = httpx.post(url, json={"instances": [risky]}, headers=auth, timeout=30)
    assert gone.status_code == 404 and "not served here" in gone.json()["error"], gone.text
    assert httpx.post(trees, json={"instances": [row]}, headers=auth, timeout=30).status_code == 200
    again = aiinfra(env, "serve", "remove", "churn-onnx")
    assert again.returncode == 2 and "was not added" in again.stderr, again.stderr[-2000:]


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
