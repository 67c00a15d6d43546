"""The one table of metric directions, and that every metric the platform computes is in it."""

from __future__ import annotations

import numpy as np
import pytest

from aiinfra.errors import InvalidInput
from aiinfra.monitoring.performance import PerformanceTracker
from aiinfra.training.metrics import METRIC_DIRECTION, higher_is_better


def test_higher_is_better():
    assert higher_is_better("roc_auc") and higher_is_better("accuracy") and higher_is_better("r2")
    # Error and calibration metrics: lower is better (the autopilot's old table had ece and brier the wrong way).
    for metric in ("log_loss", "rmse", "mae", "ece", "brier"):
        assert not higher_is_better(metric), metric
    with pytest.raises(InvalidInput, match="roc_auc"):
        higher_is_better("auc_roc")


@pytest.mark.parametrize("task,labels,scores,truth", [
    ("binary", [0, 1], [0.9, 0.2, 0.7, 0.4], [1, 0, 0, 1]),
    ("regression", [], [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 4.0]),
])
def test_the_monitors_rolling_metrics_have_a_direction(task, labels, scores, truth):
    tracker = PerformanceTracker(task, labels, {})
    ids = [f"r{i}" for i in range(len(scores))]
    tracker.record(ids, scores)
    assert tracker.feedback([{"request_id": r, "label": y} for r, y in zip(ids, truth)])["matched"] == len(ids)
    metrics = tracker.snapshot()["metrics"]
    assert metrics and set(metrics) <= set(METRIC_DIRECTION)
    assert np.isfinite(list(metrics.values())).all()
