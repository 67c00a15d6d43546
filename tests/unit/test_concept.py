"""Concept drift on the error stream (ADWIN through river), on seeded streams with known change points."""

from __future__ import annotations

import numpy as np
import pytest

from aiinfra.monitoring.concept import ErrorStreamDetector


def errors(rng: np.random.Generator, rate: float, n: int) -> list[float]:
    return (rng.random(n) < rate).astype(float).tolist()


def test_a_rise_in_the_error_rate_is_found_soon_after_it_starts():
    rng = np.random.default_rng(0)
    detector = ErrorStreamDetector("binary")
    assert detector.update(errors(rng, 0.15, 3000)) == []
    found = detector.update(errors(rng, 0.35, 2000))
    assert found, "an error rate going from 0.15 to 0.35 went unnoticed for 2,000 labelled rows"
    first = found[0]
    assert first["at_row"] - 3000 < 600  # detection delay, in labelled rows
    assert first["before"] == pytest.approx(0.15, abs=0.05) and first["after"] > 0.25
    assert detector.rows == 5000


def test_no_alarm_on_a_stationary_stream_and_a_fall_is_not_concept_drift():
    rng = np.random.default_rng(1)
    detector = ErrorStreamDetector("multiclass")
    assert detector.update(errors(rng, 0.2, 20_000)) == []  # delta 0.002: false alarms are rare
    assert detector.update(errors(rng, 0.05, 3000)) == []  # the model got better: not reported


def test_regression_errors_are_scaled_by_the_baseline_and_non_finite_values_skipped():
    detector = ErrorStreamDetector("regression", baseline_rmse=2.0)
    assert detector.error_of(None, 3.0) == pytest.approx(0.5) and detector.error_of(None, 60.0) == 1.0
    assert detector.update([float("nan"), float("inf"), 0.1]) == [] and detector.rows == 1
    assert ErrorStreamDetector("binary").error_of(False) == 1.0
