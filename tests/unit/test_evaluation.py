"""Evaluation metrics against known answers, slices, input validation, JSON round trip and the HTML report."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from aiinfra.errors import InvalidInput
from aiinfra.training.evaluation import (
    EvaluationReport,
    evaluate_predictions,
    render_html,
)
from aiinfra.training.metrics import METRIC_DIRECTION


def _all_finite(report: EvaluationReport) -> bool:
    values = list(report.metrics.values())
    values += [v for groups in report.slices.values() for entry in groups.values() for v in entry.values()]
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def _binary_sample(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0, 1)
    return y, p


# ----------------------------------------------------------------------------------------- known answers


def test_perfect_binary_classifier():
    y = np.array([0, 1] * 50)
    p = np.where(y == 1, 0.99, 0.01)
    r = evaluate_predictions("binary", y, p)
    assert r.metrics["accuracy"] == 1.0
    assert r.metrics["roc_auc"] == 1.0
    assert r.metrics["precision"] == r.metrics["recall"] == r.metrics["f1"] == 1.0
    assert r.metrics["ece"] == pytest.approx(0.01)
    assert r.metrics["log_loss"] == pytest.approx(-math.log(0.99))
    assert r.metrics["brier"] == pytest.approx(0.01**2)
    assert set(r.metrics) <= set(METRIC_DIRECTION)
    assert r.curves["confusion_matrix"] == [[50, 0], [0, 50]]
    assert r.curves["roc"]["fpr"][0] == 0.0 and r.curves["roc"]["tpr"][-1] == 1.0


def test_hand_computed_ece():
    # Bin [0, .5): scores .1, .2 -> mean .15, 1 of 2 positive -> |.5 - .15| * 2/4 = .175
    # Bin [.5, 1]: scores .8, .9 -> mean .85, 2 of 2 positive -> |1 - .85| * 2/4 = .075
    r = evaluate_predictions("binary", [0, 1, 1, 1], [0.1, 0.2, 0.8, 0.9], n_bins=2)
    assert r.metrics["ece"] == pytest.approx(0.25)
    cal = r.curves["calibration"]
    assert cal["mean_predicted"] == pytest.approx([0.15, 0.85])
    assert cal["fraction_positive"] == pytest.approx([0.5, 1.0])
    assert cal["count"] == [2, 2]


def test_score_of_exactly_one_lands_in_last_bin():
    r = evaluate_predictions("binary", [1, 1], [1.0, 1.0], n_bins=10)
    assert r.curves["calibration"]["count"] == [2]
    assert r.metrics["ece"] == pytest.approx(0.0)


def test_regression_matches_numpy_formulas():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    pred = np.array([1.5, 1.5, 3.0, 4.5, 4.0])
    r = evaluate_predictions("regression", y, pred)
    err = y - pred
    assert r.metrics["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert r.metrics["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert r.metrics["r2"] == pytest.approx(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2))
    assert sum(r.curves["residuals"]["counts"]) == 5
    assert len(r.curves["residuals"]["edges"]) == len(r.curves["residuals"]["counts"]) + 1
    assert r.curves["pred_vs_true"]["true"] == y.tolist()


def test_regression_scatter_is_capped():
    y = np.arange(2000, dtype=float)
    r = evaluate_predictions("regression", y, y + 1)
    assert len(r.curves["pred_vs_true"]["true"]) == 500


def test_multiclass_known_case():
    y = np.array([0, 1, 2, 2])
    p = np.array([
        [0.8, 0.1, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.1, 0.8],
        [0.6, 0.2, 0.2],  # wrong: predicts 0
    ])
    r = evaluate_predictions("multiclass", y, p, class_labels=["a", "b", "c"])
    assert r.metrics["accuracy"] == pytest.approx(0.75)
    # Per-class F1: class 0 P=1/2 R=1 -> 2/3; class 1 -> 1; class 2 P=1 R=1/2 -> 2/3.
    assert r.metrics["f1_macro"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert r.metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.8, 0.8, 0.2])))
    assert "roc_auc_ovr" in r.metrics
    # Top-label: confidences .8,.8,.8 (right) and .6 (wrong) with 10 bins.
    assert r.metrics["ece"] == pytest.approx(3 / 4 * 0.2 + 1 / 4 * 0.6)
    assert r.curves["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert r.class_labels == ["a", "b", "c"]


def test_multiclass_rows_within_tolerance_are_accepted():
    p = np.array([[0.5, 0.5004, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    r = evaluate_predictions("multiclass", [1, 2, 2], p)
    assert _all_finite(r)


# -------------------------------------------------------------------------------------- undefined metrics


def test_single_class_omits_undefined_metrics():
    r = evaluate_predictions("binary", [0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4])
    for undefined in ("roc_auc", "precision", "recall", "f1"):
        assert undefined not in r.metrics
    assert {"accuracy", "log_loss", "ece", "brier"} <= set(r.metrics)
    assert "roc" not in r.curves
    assert _all_finite(r)


def test_multiclass_auc_needs_every_class():
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    r = evaluate_predictions("multiclass", [0, 1], p)
    assert "roc_auc_ovr" not in r.metrics


def test_constant_regression_target_omits_r2():
    r = evaluate_predictions("regression", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert "r2" not in r.metrics and r.metrics["mae"] == pytest.approx(2 / 3)


def test_confident_mistake_gives_finite_log_loss():
    r = evaluate_predictions("binary", [1, 0], [0.0, 1.0])
    assert math.isfinite(r.metrics["log_loss"]) and r.metrics["log_loss"] > 30


# -------------------------------------------------------------------------------------------------- slices


def test_slices_small_groups_get_rows_only():
    y, p = _binary_sample(100)
    region = np.array(["eu"] * 80 + ["us"] * 20)
    plan = np.array([1] * 50 + [2] * 50)
    r = evaluate_predictions("binary", y, p, slices={"region": region, "plan": plan}, min_slice_rows=30)
    assert r.slices["region"]["us"] == {"rows": 20.0}
    eu = r.slices["region"]["eu"]
    assert eu["rows"] == 80.0 and {"accuracy", "roc_auc", "log_loss", "ece"} <= set(eu)
    assert set(r.slices["plan"]) == {"1", "2"}
    expected = evaluate_predictions("binary", y[:80], p[:80]).metrics
    assert {k: v for k, v in eu.items() if k != "rows"} == pytest.approx(expected)
    assert _all_finite(r)


def test_slice_skips_metrics_undefined_on_the_group():
    y = np.array([0] * 40 + [0, 1] * 20)
    p = np.where(y == 1, 0.8, 0.3)
    seg = ["a"] * 40 + ["b"] * 40
    r = evaluate_predictions("binary", y, p, slices={"seg": seg})
    assert "roc_auc" not in r.slices["seg"]["a"] and "roc_auc" in r.slices["seg"]["b"]


# ---------------------------------------------------------------------------------------- invalid inputs


@pytest.mark.parametrize(
    ("task", "y_true", "y_score", "kwargs", "fragment"),
    [
        ("binary", [0, 1, 1], [0.1, 0.9], {}, "length mismatch"),
        ("binary", [], [], {}, "empty"),
        ("binary", [0, 1], [[0.1, 0.9], [0.2, 0.8]], {}, "shape"),
        ("binary", [0, 2], [0.1, 0.9], {}, "range"),
        ("binary", [0, 1], [0.1, 1.2], {}, "[0, 1]"),
        ("binary", [0, 1], [0.1, float("nan")], {}, "finite"),
        ("binary", [0, 0.5], [0.1, 0.9], {}, "integer"),
        ("binary", ["a", "b"], [0.1, 0.9], {}, "integer"),
        ("multiclass", [0, 1], [0.1, 0.9], {}, "shape"),
        ("multiclass", [0, 1], [[0.2, 0.2, 0.2], [0.1, 0.8, 0.1]], {}, "sum to 1"),
        ("multiclass", [0, 3], [[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]], {}, "range 0..2"),
        ("multiclass", [0, 1], [[0.5, 0.5], [0.5, 0.5]], {"class_labels": ["a"]}, "class_labels"),
        ("regression", [1.0, 2.0], [1.0, float("inf")], {}, "finite"),
        ("regression", [1.0, 2.0], [[1.0], [2.0]], {}, "1-D"),
        ("regression", [1.0, 2.0], [1.0, 2.0], {"class_labels": ["a"]}, "class_labels"),
        ("binary", [0, 1], [0.1, 0.9], {"slices": {"region": ["eu"]}}, "region"),
        ("binary", [0, 1], [0.1, 0.9], {"min_slice_rows": 0}, "min_slice_rows"),
        ("binary", [0, 1], [0.1, 0.9], {"n_bins": 0}, "n_bins"),
        ("ranking", [0, 1], [0.1, 0.9], {}, "task"),
    ],
)
def test_invalid_input_names_the_problem(task, y_true, y_score, kwargs, fragment):
    with pytest.raises(InvalidInput) as err:
        evaluate_predictions(task, y_true, y_score, **kwargs)
    assert fragment in str(err.value)


# ------------------------------------------------------------------------------------------ serialisation


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_report_round_trips_through_json(task):
    rng = np.random.default_rng(1)
    n = 120
    if task == "binary":
        y, score = _binary_sample(n)
    elif task == "multiclass":
        y = rng.integers(0, 3, n)
        score = rng.dirichlet([1, 1, 1], n)
    else:
        y = rng.normal(size=n)
        score = y + rng.normal(0, 0.1, n)
    labels = [np.int64(i) for i in range(3)] if task == "multiclass" else None
    r = evaluate_predictions(task, y, score, class_labels=labels, slices={"g": rng.integers(0, 2, n)})
    back = EvaluationReport.model_validate_json(r.model_dump_json())
    assert back == r
    assert _all_finite(r)


# -------------------------------------------------------------------------------------------------- HTML


def test_render_html_binary():
    y, p = _binary_sample(200)
    r = evaluate_predictions("binary", y, p, slices={"region": ["eu", "us"] * 100})
    history = [{"epoch": i, "train_loss": 1 / (i + 1), "val_loss": 1.2 / (i + 1)} for i in range(5)]
    start = time.perf_counter()
    extra = {"run_id": "r-1", "gate": "<b>passed</b>"}
    page = render_html(r, title="<script>alert(1)</script>", history=history, extra=extra)
    assert time.perf_counter() - start < 2.0
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<img") == 4  # confusion matrix, ROC, reliability diagram, loss curves
    for metric in r.metrics:
        assert metric in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;passed&lt;/b&gt;" in page and "r-1" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_render_html_regression_and_multiclass():
    reg = evaluate_predictions("regression", [1.0, 2.0, 3.0], [1.1, 1.9, 3.2])
    page = render_html(reg, title="reg")
    assert page.count("<img") == 2 and "rmse" in page  # residuals, predicted vs true

    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    multi = evaluate_predictions("multiclass", [0, 1, 2], p, class_labels=["x", "y", "z"])
    page = render_html(multi, title="multi")
    assert page.count("<img") == 2 and "f1_macro" in page  # confusion matrix, reliability diagram
