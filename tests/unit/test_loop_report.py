"""The demo loop's HTML report, rendered from synthetic data, without Ray."""

from __future__ import annotations

import html
import math

import numpy as np
import pytest

from aiinfra.demo.report import render_loop_report

T0 = 1_700_000_000.0
IMG = "data:image/png;base64,"
SECTIONS = [
    "Timeline",
    "Data profile: reference vs production",
    "Training curves",
    "Evaluation",
    "Drift over time",
    "Performance before labels (CBPE)",
    "Canary",
]
REASON = "challenger accuracy 0.91 beats champion 0.84 (one-sided p=0.003 < 0.05)"


def _report(window_id: int, status: str, shift: float) -> dict:
    """A DriftReport as JSON: p-values fall as the production data shifts."""
    if status == "skipped":
        return {"window_id": window_id, "window_end": T0 + 60 * window_id, "rows": 12, "status": status,
                "reason": "too few rows (12 < 50)", "result": None}
    features = [
        {"feature": "tenure", "statistic": 0.05 + shift, "p_value": max(0.6 - shift, 1e-9),
         "drifted": shift > 0.5, "psi": 0.02 + shift / 4},
        {"feature": "<x>", "statistic": 0.04, "p_value": 0.4, "drifted": False, "psi": None},
        {"feature": "plan", "statistic": 1.2, "p_value": 0.0 if shift > 0.5 else 0.3,
         "drifted": shift > 0.5, "psi": 0.1},
    ]
    drifted = [f["feature"] for f in features if f["drifted"]]
    return {
        "window_id": window_id, "window_end": T0 + 60 * window_id, "rows": 200, "status": status,
        "reason": f"{len(drifted)} feature(s) drifted" if drifted else "no drift",
        "result": {"share_drifted": len(drifted) / len(features), "drifted_features": drifted,
                   "features": features, "alpha": 0.05},
    }


@pytest.fixture
def data() -> dict:
    rng = np.random.default_rng(0)
    epochs = lambda base: [  # noqa: E731
        {"epoch": e, "train_loss": base / (e + 1), "val_loss": base / (e + 1) + 0.05} for e in range(5)
    ]
    return {
        "summary": {"model": "churn", "champion": 1, "challenger": 2, "windows": 4},
        "alpha": 0.05,
        "timeline": [
            {"at": T0, "what": "trained churn@1", "kind": "stage"},
            {"at": T0 + 30, "what": "deployed churn@1", "kind": "stage"},
            {"at": T0 + 200, "what": "drift in window 3", "kind": "decision"},
            {"at": T0 + 210, "what": "retrain decided", "kind": "decision"},
            {"at": T0 + 300, "what": "canary at 10%", "kind": "traffic"},
            {"at": T0 + 420, "what": "promoted churn@2", "kind": "decision"},
        ],
        "markers": [{"at": T0 + 210, "label": "retrain decided"}, {"at": T0 + 420, "label": "promoted"}],
        "profile": {
            "tenure": {"reference": rng.normal(24, 6, 300).tolist(), "production": rng.normal(30, 6, 200).tolist()},
            "<x>": {"reference": rng.uniform(0, 1, 300).tolist(), "production": rng.uniform(0, 1, 200).tolist()},
            "plan": {"reference": rng.choice(["basic", "pro", "team"], 300, p=[0.6, 0.3, 0.1]).tolist(),
                     "production": rng.choice(["basic", "pro", "team"], 200, p=[0.3, 0.4, 0.3]).tolist()},
        },
        "runs": [{"label": "churn@1 (initial)", "epochs": epochs(0.9)},
                 {"label": "churn@2 (retrained)", "epochs": epochs(0.7)}],
        "evaluations": {
            "churn@1 on fresh data": {"accuracy": 0.8412, "auc": 0.88, "log_loss": 0.41},
            "churn@2 on fresh data": {"accuracy": 0.9133, "auc": 0.93, "log_loss": 0.29, "f1": 0.7},
        },
        "drift_reports": [_report(1, "ok", 0.0), _report(2, "skipped", 0.0), _report(3, "drift", 0.8),
                          _report(4, "drift", 0.9)],
        "estimates": [
            {"window_id": w, "rows": 1000, "labelled": labelled, "realised": realised, "error": {},
             "estimate": {"rows": 1000, "reliable": True, "reason": "", "calibration_error": 0.02,
                          "metrics": {"accuracy": {"value": v, "low": v - 0.03, "high": v + 0.03}}}}
            for w, v, labelled, realised in ((1, 0.84, 1000, {"accuracy": 0.85}), (3, 0.80, 900, {"accuracy": 0.612}),
                                             (4, 0.79, 0, None))
        ],
        "canary": {
            "champion": {"version": 1, "requests": 900, "errors": 3, "labelled": 400, "correct": 336},
            "challenger": {"version": 2, "requests": 100, "errors": 0, "labelled": 45, "correct": 41},
            "decision": {"action": "promote", "reason": REASON,
                         "evidence": {"p_value": 0.003, "min_labelled": 40, "arms": ["champion", "challenger"]}},
        },
    }


def test_full_report_has_every_section_and_plot(data):
    page = render_loop_report(data, title="churn <loop>")

    assert page.startswith("<!DOCTYPE html>")
    assert "churn &lt;loop&gt;" in page and "churn <loop>" not in page
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    # One figure per section: timeline, profile grid, curves, evaluation, drift (2 panels), estimates, canary.
    assert page.count(IMG) == 7
    # The estimates beside what the labels showed: the concept-drifted window is 0.188 off.
    assert "0.612" in page and "0.188" in page and "mean |estimated - realised| accuracy 0.099 over 2" in page
    assert "Could not render" not in page and "no data" not in page.lower()
    assert "&lt;x&gt;" in page and "<x>" not in page
    assert html.escape(REASON) in page
    assert "promote" in page
    # Tables: wall times in UTC, seconds since the first event, drifted features, 4-decimal metrics.
    assert "22:13:20" in page and "420.0" in page
    assert "tenure, plan" in page and "too few rows (12 &lt; 50)" in page
    assert "0.8412" in page and "0.9133" in page
    assert "http://" not in page and "<script" not in page  # self-contained


def test_empty_data_renders_no_data_notes():
    page = render_loop_report({})

    assert "aiinfra: the monitoring loop" in page
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert page.count('class="note"') == len(SECTIONS)
    assert page.count(IMG) == 0
    # Empty containers count as missing too.
    page = render_loop_report({"timeline": [], "profile": {}, "canary": {}})
    assert page.count('class="note"') == len(SECTIONS) and page.count(IMG) == 0


def test_none_and_nan_values_render(data):
    nan = math.nan
    data["summary"] = {"accuracy": nan, "note": None}
    data["timeline"].append({"at": None, "what": "no time"})
    data["timeline"].append({"at": nan, "what": "nan time", "kind": None})
    data["profile"]["tenure"]["production"] += [None, nan]
    data["profile"]["empty"] = {"reference": [None, nan], "production": []}
    data["profile"]["mixed"] = {"reference": [1, "a", None], "production": None}
    data["runs"][0]["epochs"][2]["val_loss"] = nan
    data["runs"].append({"label": "broken", "epochs": [{"epoch": 0, "train_loss": None}]})
    data["evaluations"]["churn@1 on fresh data"]["auc"] = nan
    data["evaluations"]["none"] = {"accuracy": None}
    data["drift_reports"].append({"window_id": 5, "window_end": None, "rows": None, "status": "ok",
                                  "reason": None, "result": {"share_drifted": nan, "features": [
                                      {"feature": "tenure", "p_value": nan, "drifted": None}]}})
    data["canary"]["challenger"].update(labelled=0, correct=None, errors=None)
    data["canary"]["decision"]["evidence"]["p_value"] = nan
    data["estimates"].append({"window_id": None, "estimate": {"metrics": {"accuracy": {"value": nan}}}})

    page = render_loop_report(data)

    assert "Could not render" not in page
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "—" in page  # missing values shown as a dash
    # Evaluation: no metric is a number for all three labels, so a table and a note, no chart.
    assert "No metric has a value for every evaluation" in page
    # Drift: one window has no end time, so it falls back to plotting by window id, still a chart; and
    # the estimates' chart (a window with no id and a NaN estimate is a row of dashes).
    assert page.count(IMG) == 6
    assert html.escape(REASON) in page


def test_only_skipped_windows_and_no_labels():
    page = render_loop_report({
        "drift_reports": [{"window_id": 1, "window_end": T0, "rows": 3, "status": "skipped",
                           "reason": "too few rows", "result": None}],
        "canary": {"champion": {"version": 1, "requests": 5, "errors": 0, "labelled": 0, "correct": 0}},
    })

    assert "Could not render" not in page
    assert page.count(IMG) == 1  # the drift plot; the canary has no accuracy to draw
    assert "No labelled requests yet" in page and "No decision yet" in page
