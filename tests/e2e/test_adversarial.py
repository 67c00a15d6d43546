"""The attack on the monitoring loop, end to end: a client holding only a `predict` token tries to make the
autopilot retrain (and so, later, promote) a model of its choosing, against the served demo model with the
autopilot driving it.

What it tries, and what stops it:
- label its own and others' requests (flipped labels would become the retrain's rows and the canary's
  evidence): `/feedback` is not a `predict` token's route, 403 either way;
- close drift windows with shifted rows (one request of about 2,100 rows was enough to close two windows
  and trigger a retrain): one token fills at most `monitoring.max_token_share` of a window, and a window
  that closes on time with mostly one token's rows is stored as skipped, not tested.

The attempts show in the request metrics (403s), the monitor's metrics (rows refused) and its windows
(skipped, naming the token); the autopilot decides nothing and the champion stays. The `feedback`-token
variant (a client that may label its own requests) is covered where the retrain runs (test_up_down: the
retrain is judged on a trusted holdout) and in the unit tests of the canary's per-token cap.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from demo_process import BIN, serving_demo

ROOT = Path(__file__).resolve().parents[2]
WINDOW_S = 6.0
SETTINGS = {"monitoring": {"max_token_share": 0.25, "window_rows": 400, "window_seconds": WINDOW_S, "min_rows": 50}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    config = tmp_path_factory.mktemp("adversarial-config") / "platform.yaml"
    config.write_text(yaml.safe_dump(SETTINGS))
    with serving_demo(tmp_path_factory.mktemp("adversarial-home"), ["--rows", "6000", "--epochs", "3", "--no-loop"],
                      timeout_s=400, env={"AIINFRA_CONFIG": str(config)}) as running:
        yield running


def _cli(served, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "aiinfra"), *args], env=served["env"], capture_output=True, text=True,
                          timeout=timeout)


def _scrape_total(served, metric: str, **tags: str) -> float:
    """The sum of ``metric`` over the cluster's Prometheus endpoints, for the series with these tags."""
    discovery = Path("/tmp/ray/prom_metrics_service_discovery.json")  # Ray writes its scrape targets here
    targets = [t for group in json.loads(discovery.read_text()) for t in group["targets"]] if discovery.exists() else []
    total = 0.0
    for target in targets:
        try:
            text = httpx.get(f"http://{target}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in tags.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(what: str, check, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_a_predict_token_cannot_label_or_drift_its_way_to_a_retrain(served, tmp_path):
    base, admin = served["base"], served["auth"]
    made = _cli(served, "token", "create", "--role", "predict", "--model", "churn")
    assert made.returncode == 0, made.stderr
    attacker = {"Authorization": f"Bearer {made.stdout.strip()}"}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "model": "churn",
        "trigger": {"drift_features_min": 1, "consecutive_windows": 2, "performance_drop": None},
        "cooldown_s": 0,
        "retrain": {"training_config": str(ROOT / "jobs" / "configs" / "churn.yaml")},
        "canary": {"share": 0.5, "min_requests": 20, "min_labelled": 20, "max_duration_s": 120},
    }))
    started = _cli(served, "autopilot", "start", str(policy), "--poll-interval", "1")
    assert started.returncode == 0, started.stderr
    try:
        time.sleep(0.6)  # the server looks up a new token id at most twice a second
        row = {"tenure_months": 9.0, "monthly_charges": 80.0, "support_calls": 2, "plan": "basic", "region": "west"}
        predict = f"{base}/predict/churn"
        theirs = httpx.post(predict, json={"instances": [row]}, headers=admin, timeout=60).json()["request_id"]
        mine = httpx.post(predict, json={"instances": [row]}, headers=attacker, timeout=60)
        assert mine.status_code == 200, mine.text
        # Counted before the model is resolved (the token is checked first), so under "(unknown)": a refused
        # caller does not get to name metric series.
        forbidden = {"route": "/feedback/{name}", "status": "403"}
        forbidden_before = _scrape_total(served, "ray_aiinfra_requests_total", **forbidden)

        # 1. Labels: neither its own request nor anyone else's.
        for rid in (mine.json()["request_id"], theirs):
            r = httpx.post(f"{base}/feedback/churn", json={"request_id": rid, "label": 0}, headers=attacker, timeout=60)
            assert r.status_code == 403 and "feedback" in r.json()["error"], r.text

        # 2. Shifted rows, 2,100 a request, each request in a window of its own (windows close after WINDOW_S).
        shifted = [{**row, "monthly_charges": 190.0 + i % 10, "support_calls": 9, "tenure_months": 1.0 + i % 3}
                   for i in range(2100)]
        for _ in range(3):
            r = httpx.post(predict, json={"instances": shifted}, headers=attacker, timeout=120)
            assert r.status_code == 200, r.text  # served: the cap is on what the monitor learns, not on serving
            time.sleep(WINDOW_S + 1)

        def closed_windows():
            st = json.loads(_cli(served, "monitor", "status", "churn", "--json").stdout)
            return st if len([r for r in st["reports"] if r["rows"] >= 100]) >= 2 else None

        st = _wait("two windows of the attacker's rows to close", closed_windows)
        attacked = [r for r in st["reports"] if r["rows"] >= 100]
        assert all(r["status"] == "skipped" and "max_token_share" in r["reason"] for r in attacked), attacked
        assert st["stats"]["rows_over_quota"] >= 3 * (2100 - 100)  # 100 = 25% of a 400-row window per window
        assert not any(r["status"] == "drift" for r in st["reports"]), st["reports"]

        # 3. The autopilot saw nothing to act on; the champion is the one it was.
        time.sleep(3)  # a few of its 1-second polls
        pilot = json.loads(_cli(served, "autopilot", "status", "churn", "--json").stdout)["models"]["churn"]
        assert pilot["state"]["state"] == "watching" and pilot["decisions"] == [], pilot
        shown = json.loads(_cli(served, "models", "show", "churn@champion", "--json").stdout)
        assert shown["version"] == 1

        # 4. The attempts are in the metrics: the refused labels (403) and the rows past the token's share.
        _wait("the 403s in the request metrics", lambda: _scrape_total(
            served, "ray_aiinfra_requests_total", **forbidden) >= forbidden_before + 2)
        _wait("the refused rows in the monitor's metrics", lambda: _scrape_total(
            served, "ray_aiinfra_monitor_refused_total", model="churn", what="rows_over_token_share") >= 3 * 2000)
    finally:
        _cli(served, "autopilot", "stop", "churn")
