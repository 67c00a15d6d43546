"""The promotion gate on hand-built reports: direction, thresholds, slice regressions, missing metrics."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aiinfra.errors import InvalidInput
from aiinfra.training.evaluation import EvaluationReport
from aiinfra.training.gate import GateConfig, GateVerdict, promotion_gate


def report(metrics: dict[str, float], slices: dict | None = None, task: str = "binary") -> EvaluationReport:
    return EvaluationReport(task=task, rows=1000, metrics=metrics, slices=slices or {}, curves={})


def sliced(
    overall: float, per_slice: dict[str, tuple[float, float]], metric: str = "roc_auc"
) -> EvaluationReport:
    """A report whose "region" slices are given as value -> (rows, metric value)."""
    slices = {"region": {k: {"rows": rows, metric: v} for k, (rows, v) in per_slice.items()}}
    return report({metric: overall}, slices)


def test_no_champion_passes():
    v = promotion_gate(report({"roc_auc": 0.7}), None, GateConfig(metric="roc_auc"))
    assert v.passed and "no champion" in v.reason
    assert v.champion is None and v.improvement is None and v.slice_regressions == []


def test_higher_is_better_metric():
    cfg = GateConfig(metric="roc_auc")
    v = promotion_gate(report({"roc_auc": 0.812}), report({"roc_auc": 0.801}), cfg)
    assert v.passed and v.improvement == pytest.approx(0.011)
    expected = "roc_auc 0.812 vs champion 0.801 (+0.011 >= +0.000); no slice regressed more than 0.050"
    assert v.reason == expected
    assert not promotion_gate(report({"roc_auc": 0.79}), report({"roc_auc": 0.801}), cfg).passed


def test_lower_is_better_metric():
    cfg = GateConfig(metric="log_loss")
    better = promotion_gate(report({"log_loss": 0.30}), report({"log_loss": 0.35}), cfg)
    assert better.passed and better.improvement == pytest.approx(0.05)
    worse = promotion_gate(report({"log_loss": 0.40}), report({"log_loss": 0.35}), cfg)
    assert not worse.passed and worse.improvement == pytest.approx(-0.05)
    assert "short by 0.050" in worse.reason


def test_min_improvement_boundary():
    cfg = GateConfig(metric="roc_auc", min_improvement=0.01)
    champion = report({"roc_auc": 0.801})
    # 0.811 - 0.801 is 0.00999999... in floats; exactly on the threshold still passes.
    assert promotion_gate(report({"roc_auc": 0.811}), champion, cfg).passed
    short = promotion_gate(report({"roc_auc": 0.8105}), champion, cfg)
    assert not short.passed and "short by" in short.reason


def test_negative_min_improvement_tolerates_a_small_loss():
    cfg = GateConfig(metric="rmse", min_improvement=-0.5)
    assert promotion_gate(report({"rmse": 10.4}), report({"rmse": 10.0}), cfg).passed
    assert not promotion_gate(report({"rmse": 10.6}), report({"rmse": 10.0}), cfg).passed


def test_slice_regression_fails_and_names_the_slice():
    cfg = GateConfig(metric="roc_auc", max_slice_regression=0.05)
    champion = sliced(0.80, {"eu": (500, 0.80), "us": (400, 0.85), "apac": (10, 0.9)})
    # Better overall; "us" drops 0.10; "apac" drops more but has too few rows to count.
    candidate = sliced(0.82, {"eu": (500, 0.84), "us": (400, 0.75), "apac": (10, 0.5)})
    v = promotion_gate(candidate, champion, cfg)
    assert not v.passed
    assert "region=us" in v.reason and "apac" not in v.reason
    expected = {"column": "region", "value": "us", "candidate": 0.75, "champion": 0.85}
    assert v.slice_regressions == [{**expected, "regression": pytest.approx(0.10)}]
    # Disabling the slice check lets the same candidate through.
    assert promotion_gate(candidate, champion, GateConfig(metric="roc_auc", max_slice_regression=None)).passed


def test_slice_regression_within_tolerance_passes():
    champion = sliced(0.80, {"eu": (500, 0.80)})
    candidate = sliced(0.81, {"eu": (500, 0.76)})
    assert promotion_gate(candidate, champion, GateConfig(metric="roc_auc")).passed


def test_slice_direction_for_lower_is_better():
    champion = sliced(0.30, {"eu": (500, 0.30)}, metric="log_loss")
    candidate = sliced(0.28, {"eu": (500, 0.40)}, metric="log_loss")
    v = promotion_gate(candidate, champion, GateConfig(metric="log_loss"))
    assert not v.passed and v.slice_regressions[0]["regression"] == pytest.approx(0.10)


def test_both_failures_are_reported():
    champion = sliced(0.80, {"eu": (500, 0.80)})
    candidate = sliced(0.78, {"eu": (500, 0.60)})
    v = promotion_gate(candidate, champion, GateConfig(metric="roc_auc"))
    assert not v.passed and "short by" in v.reason and "region=eu" in v.reason


def test_unknown_metric_refused_by_config():
    with pytest.raises(ValidationError, match="auc"):
        GateConfig(metric="auc")
    with pytest.raises(ValidationError):
        GateConfig(metric="roc_auc", surprise=1)


def test_metric_missing_from_candidate():
    with pytest.raises(InvalidInput, match=r"roc_auc.*available: accuracy, log_loss"):
        candidate = report({"accuracy": 0.9, "log_loss": 0.3})
        promotion_gate(candidate, report({"roc_auc": 0.8}), GateConfig(metric="roc_auc"))


def test_champion_without_the_metric_passes():
    v = promotion_gate(report({"roc_auc": 0.8}), report({"accuracy": 0.9}), GateConfig(metric="roc_auc"))
    assert v.passed and "champion has no roc_auc" in v.reason


def test_verdict_round_trips_through_json():
    cfg = GateConfig(metric="roc_auc")
    v = promotion_gate(sliced(0.82, {"eu": (500, 0.6)}), sliced(0.8, {"eu": (500, 0.8)}), cfg)
    assert GateVerdict.model_validate_json(v.model_dump_json()) == v
