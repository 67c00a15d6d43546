"""The whole monitoring loop end to end, as `make demo` runs it: the first model serves, production
traffic drifts (covariate and concept), the drift monitor sees it, the `autopilot` actor submits the
retraining Ray job, canaries the new version on live traffic and promotes it, while a client calling
the model the whole time sees no failed request. Then the CLI shows the autopilot's decisions.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from demo_process import BIN, serving_demo


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    with serving_demo(tmp_path_factory.mktemp("loop-home"), ["--rows", "6000", "--epochs", "3"], timeout_s=900) as running:
        yield running


def test_drift_is_detected_a_retrain_runs_and_the_canary_promotes_version_2(loop):
    out = "".join(loop["lines"])
    assert "[14/14] the served version switches done" in out, out[-4000:]
    summary = json.loads((loop["home"] / "reports" / "loop.json").read_text())
    actions = [d["action"] for d in summary["decisions"]]
    assert actions == ["retrain", "start_canary", "promote"], summary["decisions"]
    retrain, canary, promote = summary["decisions"]
    assert "drift windows" in retrain["reason"] and retrain["evidence"]["trigger"] == "drift"
    assert canary["evidence"]["job_id"].startswith("retrain-churn-")  # it ran as a Ray job
    assert canary["evidence"]["challenger_version"] == 2 and canary["evidence"]["share"] == 0.3
    # Its gate judged it on production rows labelled by the demo's labeller token, none by a client.
    judged = canary["evidence"]["judged_on"]
    assert judged["holdout"] == "trusted production rows" and judged["holdout_rows"] >= 100, judged
    assert judged["untrusted_rows"] == 0 and judged["trusted_rows"] > judged["holdout_rows"]
    test = promote["evidence"]["test"]
    assert test["passed"] and test["p_value"] < 0.05 and test["n_challenger"] >= 150
    assert test["p_challenger"] > test["p_champion"]  # the retrained model is better on the drifted world
    # The switch: the served version is the new one, and the client calling all along saw no failure.
    assert summary["promoted"] and summary["served_version"] == 2
    assert summary["background_failed"] == 0 and summary["background_requests"] > 20
    assert set(summary["traffic_statuses"]) == {"200"}
    r = httpx.post(f"{loop['base']}/predict/churn", headers=loop["auth"], json={"instances": [
        {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}]})
    assert r.status_code == 200 and r.json()["version"] == 2


def test_the_timeline_and_the_html_report(loop):
    out = "".join(loop["lines"])
    assert "timeline:" in out and "autopilot: promote version 2" in out
    html = (loop["home"] / "reports" / "loop.html").read_text()
    for section in ("Timeline", "Data profile", "Training curves", "Evaluation", "Drift over time",
                    "Performance before labels (CBPE)", "Canary"):
        assert f"<h2>{section}" in html, section
    assert html.count("data:image/png;base64,") == 7  # a plot in every section: none is empty
    assert "mean |estimated - realised| accuracy" in html  # the windows' estimates met their labels


def test_the_cli_shows_the_autopilots_state_and_decisions(loop):
    r = subprocess.run([str(BIN / "aiinfra"), "autopilot", "status", "churn", "--json"], env=loop["env"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    st = json.loads(r.stdout)["models"]["churn"]
    assert st["state"]["state"] == "watching" and st["state"]["last_outcome"] == "promoted"
    assert st["state"]["in_cooldown"] and st["last_error"] is None
    assert [d["action"] for d in st["decisions"]] == ["promote", "start_canary", "retrain"]
    text = subprocess.run([str(BIN / "aiinfra"), "autopilot", "status"], env=loop["env"], capture_output=True,
                          text=True, timeout=120).stdout
    assert "churn: watching" in text and "promote version 2" in text
    # The monitor now measures against the new champion's training data.
    mon = json.loads(subprocess.run([str(BIN / "aiinfra"), "monitor", "status", "churn", "--json"], env=loop["env"],
                                    capture_output=True, text=True, timeout=120).stdout)
    assert mon["version"] == "churn@2"
