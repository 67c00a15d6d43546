"""`aiinfra demo` as a user runs it, then its HTTP endpoint as a client sees it.

One demo run (about a minute): it trains with Ray Train, registers, serves on Ray Serve and
answers its own HTTP prediction; with --keep-serving it stays up so this test can send its
own requests, then stops on Ctrl-C (SIGINT) and must exit cleanly.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from demo_process import BIN, DemoOnDemand


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    started = DemoOnDemand(lambda: tmp_path_factory.mktemp("demo-home"), ["--rows", "6000", "--epochs", "3", "--no-loop"],
                           timeout_s=400)
    yield started
    started.close()


@pytest.fixture
def demo(demos):
    """The running demo (one per module; started again only if a test before stopped it)."""
    return demos()


def test_demo_prints_predictions_from_a_registered_version(demo):
    out = "".join(demo["lines"])
    assert "[9/9] predict over HTTP done" in out
    assert out.count("(features from the online store) -> churn p=") == 3
    assert out.count("churn@1: {") == 5, out  # five predictions, each naming model and version
    report = json.loads((demo["home"] / "reports" / "demo.json").read_text())
    assert report["model"] == "churn@1" and report["alias"] == "champion"
    assert report["predictions"]["version"] == 1 and len(report["predictions"]["predictions"]) == 5
    assert report["metrics"]["roc_auc"] > 0.7  # the data has real signal; a broken pipeline would not find it
    assert report["bad_request_status"] == 422
    assert report["predictions_by_entity"]["version"] == 1 and len(report["predictions_by_entity"]["predictions"]) == 3


def test_http_predict_and_oip_metadata(demo):
    base = demo["base"]
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    meta = httpx.get(f"{base}/v2/models/churn", headers=demo["auth"]).json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["plan"] == "BYTES"
    assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1]
    row = {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}
    calm = {"tenure_months": 60.0, "monthly_charges": 30.0, "support_calls": 0, "plan": "premium", "region": "north"}
    r = httpx.post(f"{base}/predict/churn", json={"instances": [row, calm]}, headers=demo["auth"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "churn" and body["version"] == 1 and body["request_id"]
    risky, safe = body["predictions"]
    assert risky["probability"] > safe["probability"]  # follows the known relationship in the data


@pytest.mark.parametrize(
    "path,content,status,needle",
    [
        ("/predict/churn", b"{not json", 422, "not valid JSON"),
        ("/predict/churn", b'{"instances": [{"tenure_months": "x"}]}', 422, "tenure_months"),
        ("/predict/churn", b'{"rows": []}', 422, "rows"),
        ("/predict/nope", b'{"instances": [{}]}', 404, "nope"),
        ("/predict/churn", b'{"entity_ids": [999999999]}', 422, "999999999"),
        ("/predict/churn", b'{"entity_ids": [{"a": 1}]}', 422, "strings or numbers"),
        ("/predict/churn", b'{"instances": [], "entity_ids": [1]}', 422, "exactly one"),
    ],
)
def test_bad_requests_get_clear_4xx(demo, path, content, status, needle):
    r = httpx.post(demo["base"] + path, content=content, headers=demo["auth"])
    assert r.status_code == status and needle in r.json()["error"]


def test_oip_v2_infer_without_json_content_type(demo):
    body = {
        "id": "req-7",
        "inputs": [
            {"name": "tenure_months", "shape": [2], "datatype": "FP32", "data": [2.0, 60.0]},
            {"name": "monthly_charges", "shape": [2], "datatype": "FP64", "data": [150.0, 30.0]},
            {"name": "support_calls", "shape": [2, 1], "datatype": "INT64", "data": [[6], [0]]},
            {"name": "plan", "shape": [2], "datatype": "BYTES", "data": ["basic", "premium"]},
            {"name": "region", "shape": [2], "datatype": "BYTES", "data": ["north", "north"]},
        ],
    }
    # KServe and Triton clients often send no JSON Content-Type: the body is read regardless
    r = httpx.post(f"{demo['base']}/v2/models/churn/infer", content=json.dumps(body).encode(),
                   headers={**demo["auth"], "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "churn" and out["model_version"] == "1" and out["id"] == "req-7"
    prob = {o["name"]: o for o in out["outputs"]}["probability"]
    assert prob["shape"] == [2] and prob["data"][0] > prob["data"][1]
    bad = httpx.post(f"{demo['base']}/v2/models/churn/infer", json={"inputs": [{"name": "plan", "shape": [1], "datatype": "FP32", "data": [1]}]},
                     headers=demo["auth"])
    assert bad.status_code == 422 and "plan" in bad.json()["error"]


def test_auth_and_limits(demo):
    base = demo["base"]
    row = {"instances": [{"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}]}
    assert httpx.post(f"{base}/predict/churn", json=row).status_code == 401
    assert httpx.post(f"{base}/predict/churn", json=row, headers={"Authorization": "Bearer aii_00000000_nope"}).status_code == 401
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200  # health needs no token
    made = subprocess.run([str(BIN / "aiinfra"), "token", "create", "--role", "labeller"], env=demo["env"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    labeller_only = {"Authorization": f"Bearer {made.stdout.strip()}"}
    time.sleep(0.6)  # the server looks up a new token id at most twice a second
    r = httpx.post(f"{base}/predict/churn", json=row, headers=labeller_only)
    assert r.status_code == 403 and "'labeller' token may not predict" in r.json()["error"]
    huge = b'{"instances": [' + b'{"tenure_months": 1.0},' * 60_000 + b"{}]}"
    r = httpx.post(f"{base}/predict/churn", content=huge, headers=demo["auth"])
    assert r.status_code == 413 and "limit" in r.json()["error"]


def _move_champion(demo, version: int) -> None:
    from aiinfra.config import load_config
    from aiinfra.platform import open_local

    with open_local(load_config(environ={"AIINFRA_HOME": str(demo["home"])})) as p:
        p.registry.set_alias("churn", version, "champion")


def test_alias_move_under_load_fails_no_request(demo, tmp_path):
    """Register a new version, move `champion` to it while requests keep coming: every one succeeds,
    and the served version switches from 1 to the new one without a restart."""
    from aiinfra.config import load_config
    from aiinfra.platform import open_local

    with open_local(load_config(environ={"AIINFRA_HOME": str(demo["home"])})) as p:
        v1 = p.registry.get("churn@1")
        files = p.registry.download(v1, tmp_path / "v1")
        v2 = p.registry.register("churn", files, metrics=v1.metrics, signature=v1.signature, lineage=v1.lineage)
    new = v2.version  # 2, unless another test registered versions before this one
    row = {"instances": [{"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}]}
    seen: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=demo["base"], headers=demo["auth"], timeout=30) as client:
            while not stop.is_set():
                r = client.post("/predict/churn", json=row)
                seen.append((r.status_code, r.json().get("version") if r.status_code == 200 else None))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1)
        _move_champion(demo, new)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == new for _, v in seen[-5:]):
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        worker.join(timeout=30)
    statuses = {code for code, _ in seen}
    versions = [v for _, v in seen]
    assert statuses == {200}, f"failed requests during the alias move: {[c for c, _ in seen if c != 200][:5]}"
    assert versions[0] == 1 and versions[-1] == new
    first_new = versions.index(new)
    assert all(v == new for v in versions[first_new:]), "the switch must be once and for all"
    # put the champion back for the tests that follow, and wait until it is served again
    _move_champion(demo, 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.post(f"{demo['base']}/predict/churn", json=row, headers=demo["auth"]).json()["version"] == 1:
            break
        time.sleep(0.3)


def test_a_challenger_answers_its_canary_share_chosen_by_request_id(demo, tmp_path):
    """With a `challenger` alias, 10% of requests (serve.canary_share) go to it, by a hash of the
    request id: 1,000 requests split within 5 points, and a retried id always reaches the same version."""
    from aiinfra.config import load_config
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.platform import open_local
    from aiinfra.serving.routing import goes_to_challenger
    from aiinfra.storage import open_metadata_db

    config = load_config(environ={"AIINFRA_HOME": str(demo["home"])})
    with open_local(config) as p:
        champion = p.registry.get("churn@champion")
        files = p.registry.download(champion, tmp_path / "champion")
        challenger = p.registry.register("churn", files, metrics=champion.metrics, signature=champion.signature,
                                         lineage=champion.lineage)
        p.registry.set_alias("churn", challenger.version, "challenger")
    # The platform's routing key (a secret in the metadata DB): the rule is a keyed hash, the same on every replica.
    db = open_metadata_db(config.metadata_url)
    key = TokenStore(db, background=False).routing_key()
    db.close()
    row = {"instances": [{"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}]}
    try:
        with httpx.Client(base_url=demo["base"], headers=demo["auth"], timeout=30) as client:
            deadline = time.monotonic() + 60
            i = 0
            while True:  # the replicas load the challenger within a few seconds of the alias
                r = client.post("/predict/churn", json=row, headers={"X-Request-ID": f"warm-{i}"})
                assert r.status_code == 200, r.text
                if r.json()["version"] == challenger.version:
                    break
                assert time.monotonic() < deadline, "the challenger never answered"
                i += 1
            versions = []
            for i in range(1000):
                r = client.post("/predict/churn", json=row, headers={"X-Request-ID": f"canary-{i}"})
                assert r.status_code == 200, r.text
                versions.append(r.json()["version"])
                expected = challenger.version if goes_to_challenger("churn", f"canary-{i}", 0.1, key) else champion.version
                assert versions[-1] == expected, i  # the same rule on every replica
            share = versions.count(challenger.version) / len(versions)
            assert 0.05 <= share <= 0.15, share
            again = {client.post("/predict/churn", json=row, headers={"X-Request-ID": "canary-7"}).json()["version"]
                     for _ in range(5)}
            assert len(again) == 1  # a retry lands on the same version
    finally:
        with open_local(config) as p:
            p.registry.remove_alias("churn", "challenger")


def test_a_shadow_version_sees_mirrored_traffic_and_is_compared_never_returned(demo, tmp_path):
    from aiinfra.config import load_config
    from aiinfra.platform import open_local

    config = load_config(environ={"AIINFRA_HOME": str(demo["home"])})
    with open_local(config) as p:
        champion = p.registry.get("churn@champion")
        files = p.registry.download(champion, tmp_path / "champion")
        shadow = p.registry.register("churn", files, metrics=champion.metrics, signature=champion.signature,
                                     lineage=champion.lineage)
        p.registry.set_alias("churn", shadow.version, "shadow")
    row = {"instances": [{"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}]}
    try:
        deadline = time.monotonic() + 90
        while True:
            with httpx.Client(base_url=demo["base"], headers=demo["auth"], timeout=30) as client:
                for i in range(20):
                    r = client.post("/predict/churn", json=row, headers={"X-Request-ID": f"shadow-{time.time_ns()}-{i}"})
                    assert r.status_code == 200 and r.json()["version"] != shadow.version  # never returned
            st = json.loads(subprocess.run([str(BIN / "aiinfra"), "serve", "status", "--json"], env=demo["env"],
                                           capture_output=True, text=True, timeout=90).stdout or "{}")
            serving = ((st.get("apps") or {}).get("aiinfra") or {}).get("serving") or {}
            mirrored = ((serving.get("models") or {}).get("churn") or {}).get("shadow") or {}
            if mirrored.get("mirrored", 0) > 0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(2)
        assert mirrored["version"] == shadow.version and mirrored["agreement"] == 1.0  # the same weights agree
        assert mirrored["errors"] == 0
    finally:
        with open_local(config) as p:
            p.registry.remove_alias("churn", "shadow")


def _scrape(done, timeout_s: float = 60) -> str:
    """Everything on the cluster's Prometheus endpoints (Ray lists them), once ``done(text)`` holds."""
    discovery = Path("/tmp/ray/prom_metrics_service_discovery.json")  # Ray writes its scrape targets here
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        targets = [t for group in json.loads(discovery.read_text()) for t in group["targets"]] if discovery.exists() else []
        text = ""
        for target in targets:
            try:
                text += httpx.get(f"http://{target}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
        if done(text):
            break
        time.sleep(2)
    return text


# Series a counter exports only once it has counted something; the test that causes the event checks
# them (refusals: tests/e2e/test_adversarial.py).
ONLY_AFTER_AN_EVENT = {"ray_aiinfra_monitor_refused_total"}


def _assert_dashboard_series_exported(name: str, text: str) -> None:
    """The Grafana dashboard in clusters/grafana/ queries exactly series that exist."""
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "clusters/grafana" / name).read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("ray_aiinfra_")}
    missing = sorted(set(re.findall(r"ray_aiinfra_\w+", exprs)) - exported - ONLY_AFTER_AN_EVENT)
    assert not missing, f"{name} queries series that are not exported: {missing}; exported: {sorted(exported)}"


def test_inference_metrics_reach_prometheus(demo):
    """Requests, errors and latency per model and version on the cluster's Prometheus endpoints."""
    row = {"instances": [{"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}]}
    for _ in range(3):
        assert httpx.post(f"{demo['base']}/predict/churn", json=row, headers=demo["auth"]).status_code == 200
    httpx.post(f"{demo['base']}/predict/churn", json={"instances": [{}]}, headers=demo["auth"])  # a 422
    text = _scrape(lambda t: "ray_aiinfra_request_errors" in t and 'model="churn"' in t)
    assert "ray_aiinfra_requests" in text and 'route="/predict/{name}"' in text, text[-2000:]
    assert "ray_aiinfra_request_latency_ms_bucket" in text
    assert any('status="422"' in line for line in text.splitlines() if line.startswith("ray_aiinfra_request_errors"))
    assert any('version="1"' in line for line in text.splitlines() if line.startswith("ray_aiinfra_predicted_rows"))
    _assert_dashboard_series_exported("aiinfra_serving.json", text)


def test_served_requests_reach_the_drift_monitor(demo):
    """Every served request is sampled to `monitor:churn` (started on first use) without slowing it."""
    row = {"instances": [{"tenure_months": 5.0, "monthly_charges": 90.0, "support_calls": 1, "plan": "basic", "region": "east"}]}
    for _ in range(5):
        assert httpx.post(f"{demo['base']}/predict/churn", json=row, headers=demo["auth"]).status_code == 200
    deadline = time.monotonic() + 120
    while True:
        r = subprocess.run([str(BIN / "aiinfra"), "monitor", "status", "churn", "--json"], env=demo["env"],
                           capture_output=True, text=True, timeout=90)
        st = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}
        if st.get("running") and st["stats"]["rows_seen"] >= 5:
            break
        assert time.monotonic() < deadline, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
        time.sleep(3)
    assert st["model"] == "churn" and "customers@" in st["reference"]
    assert set(st["features"]["categorical"]) == {"plan", "region"}
    assert st["stats"]["rows_dropped"] == 0


def _token(demo, role: str) -> dict[str, str]:
    made = subprocess.run([str(BIN / "aiinfra"), "token", "create", "--role", role], env=demo["env"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return {"Authorization": f"Bearer {made.stdout.strip()}"}


def _label_until(url: str, body: dict, headers: dict, key: str) -> dict:
    """Post a label until the monitor has the prediction (the sampler ships about once a second) and says ``key``."""
    deadline = time.monotonic() + 60
    while True:
        r = httpx.post(url, json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        if r.json()[key] == 1:
            return r.json()
        assert time.monotonic() < deadline, r.text
        time.sleep(1)


def test_a_label_counts_only_from_the_token_that_asked_or_a_labeller(demo):
    """Label provenance: an application's `feedback` token labels its own requests; a request another token
    made is refused, so no client can label others' requests (and steer the canary or a retrain with them);
    a labeller (here the admin token) may label any."""
    app_a, app_b = _token(demo, "feedback"), _token(demo, "feedback")
    time.sleep(0.6)  # the server looks up a new token id at most twice a second
    row = {"instances": [{"tenure_months": 9.0, "monthly_charges": 80.0, "support_calls": 2, "plan": "basic", "region": "west"}]}
    predict, url = f"{demo['base']}/predict/churn", f"{demo['base']}/feedback/churn"
    mine = httpx.post(predict, json=row, headers=app_a, timeout=60).json()["request_id"]
    theirs = httpx.post(predict, json=row, headers=app_b, timeout=60).json()["request_id"]
    assert _label_until(url, {"request_id": mine, "label": 1}, app_a, "accepted")["refused"] == 0
    refused = _label_until(url, {"request_id": theirs, "label": 0}, app_a, "refused")
    assert refused["accepted"] == 0
    assert _label_until(url, {"request_id": theirs, "label": 1}, demo["auth"], "accepted")["refused"] == 0


def test_feedback_joins_labels_to_served_requests(demo):
    row = {"instances": [{"tenure_months": 5.0, "monthly_charges": 90.0, "support_calls": 1, "plan": "basic", "region": "east"}]}
    answered = httpx.post(f"{demo['base']}/predict/churn", json=row, headers=demo["auth"]).json()
    url = f"{demo['base']}/feedback/churn"
    deadline = time.monotonic() + 60
    while True:  # the sampled request reaches the monitor within about a second
        r = httpx.post(url, json={"request_id": answered["request_id"], "label": 1}, headers=demo["auth"], timeout=60)
        assert r.status_code == 200, r.text
        if r.json()["accepted"] == 1:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(1)
    unknown = httpx.post(url, json={"request_id": "no-such-request", "label": 0}, headers=demo["auth"], timeout=60)
    assert unknown.status_code == 200 and unknown.json()["unknown_request_ids"] == 1  # counted and ignored
    for bad in ({"label": 1}, {"request_id": "x"}, {"request_id": "x", "label": 1, "labels": [1]}, {"items": []}):
        r = httpx.post(url, json=bad, headers=demo["auth"], timeout=60)
        assert r.status_code == 422 and "error" in r.json(), (bad, r.text)
    assert httpx.post(url, json={"request_id": "x", "label": 1}).status_code == 401
    st = json.loads(subprocess.run([str(BIN / "aiinfra"), "monitor", "status", "churn", "--json"], env=demo["env"],
                                   capture_output=True, text=True, timeout=90).stdout)
    assert st["performance"]["labelled"] >= 1 and "accuracy" in st["performance"]["metrics"]
    # The monitor's metrics reach Prometheus too, once a drift window has closed (1,000 rows).
    batch = {"instances": row["instances"] * 100}
    for _ in range(11):
        assert httpx.post(f"{demo['base']}/predict/churn", json=batch, headers=demo["auth"], timeout=60).status_code == 200
    text = _scrape(lambda t: "ray_aiinfra_performance" in t and "ray_aiinfra_drift_share" in t, timeout_s=90)
    assert any('metric="accuracy"' in line for line in text.splitlines() if line.startswith("ray_aiinfra_performance"))
    _assert_dashboard_series_exported("aiinfra_monitoring.json", text)


def test_cli_sees_the_registered_model_and_ctrl_c_stops_cleanly(demo):
    proc = demo["proc"]
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the demo did not stop within 90 s of Ctrl-C; its last lines:\n" + "".join(demo["lines"][-30:]))
    assert code == 0, "".join(demo["lines"][-30:])
    assert "shut down" in "".join(demo["lines"])
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{demo['base']}/v2/health/live", timeout=2)
    time.sleep(1)  # let Ray's processes finish exiting before the CLI looks for a cluster
    shown = subprocess.run(
        [str(BIN / "aiinfra"), "models", "show", "churn@champion", "--json"],
        env=demo["env"], capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    version = json.loads(shown.stdout)
    assert version["version"] == 1
    assert version["lineage"]["run_id"].startswith("run-") and version["lineage"]["dataset_version"].startswith("customers@")
    # ... and the reference profile its monitor reads (holdout rows, labels and scores), hashed like the rest
    assert {"model.json", "preprocess.json", "weights.safetensors", "training_config.json", "evaluation.json",
            "evaluation.html", "reference_profile.parquet", "reference_profile.json"} == set(version["files"])
    # the data went through the gate: the version the model names exists, with its quarantine
    data = subprocess.run(
        [str(BIN / "aiinfra"), "data", "show", version["lineage"]["dataset_version"], "--json"],
        env=demo["env"], capture_output=True, text=True, timeout=120,
    )
    assert data.returncode == 0, data.stderr
    dataset = json.loads(data.stdout)
    assert dataset["quarantined_count"] == 2 and dataset["row_count"] == 6000
    assert dataset["profile"]["columns"]["plan"]["distinct"] == 3
