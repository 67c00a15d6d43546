"""`aiinfra demo` as a user runs it, then its HTTP endpoint as a client sees it.

One demo run (about a minute): it trains with Ray Train, registers, serves on Ray Serve and
answers its own HTTP prediction; with --keep-serving it stays up so this test can send its
own requests, then stops on Ctrl-C (SIGINT) and must exit cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    port = _free_port()
    env = {**os.environ, "AIINFRA_HOME": str(home), "AIINFRA_SERVE_PORT": str(port)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(BIN / "aiinfra"), "demo", "--rows", "6000", "--epochs", "3", "--keep-serving"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C to stop" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout=400) or proc.poll() is not None:
        proc.kill()
        pytest.fail("demo did not come up:\n" + "".join(lines[-60:]))
    yield {"home": home, "base": f"http://127.0.0.1:{port}", "lines": lines, "proc": proc, "env": env}
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    meta = httpx.get(f"{base}/v2/models/churn").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["plan"] == "BYTES"
    assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1]
    row = {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}
    calm = {"tenure_months": 60.0, "monthly_charges": 30.0, "support_calls": 0, "plan": "premium", "region": "north"}
    r = httpx.post(f"{base}/predict/churn", json={"instances": [row, calm]})
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
    r = httpx.post(demo["base"] + path, content=content)
    assert r.status_code == status and needle in r.json()["error"]


def test_cli_sees_the_registered_model_and_ctrl_c_stops_cleanly(demo):
    proc = demo["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0, "".join(demo["lines"][-30:])
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
    assert version["lineage"]["run_id"].startswith("train-") and version["lineage"]["dataset_version"].startswith("customers@")
    assert set(version["files"]) == {"model.json", "preprocess.json", "weights.safetensors"}
    # the data went through the gate: the version the model names exists, with its quarantine
    data = subprocess.run(
        [str(BIN / "aiinfra"), "data", "show", version["lineage"]["dataset_version"], "--json"],
        env=demo["env"], capture_output=True, text=True, timeout=120,
    )
    assert data.returncode == 0, data.stderr
    dataset = json.loads(data.stdout)
    assert dataset["quarantined_count"] == 2 and dataset["row_count"] == 6000
    assert dataset["profile"]["columns"]["plan"]["distinct"] == 3
