"""Performance before labels (CBPE): estimates against what the labels then show, on seeded synthetic models."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from aiinfra.monitoring.estimation import PerformanceEstimator, expected_calibration_error


def binary_rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated model: x ~ N(shift, 1), P(y=1 | x) = sigmoid(2x), the model's score is exactly that."""
    x = rng.normal(shift, 1.0, n)
    p = 1 / (1 + np.exp(-2 * x))
    return p, (rng.random(n) < p).astype(np.float64)


def test_binary_estimates_track_the_realised_metrics_under_covariate_shift():
    rng = np.random.default_rng(0)
    ref_scores, ref_labels = binary_rows(rng, 4000)
    estimator = PerformanceEstimator("binary", ref_scores, ref_labels)
    assert estimator.available and not estimator.problem and estimator.calibration_error < 0.05
    errors, covered = [], 0
    for shift in (0.0, 0.0, 0.5, 1.0, -1.0, 0.3, -0.5, 2.0):
        scores, labels = binary_rows(rng, 1000, shift)
        est = estimator.estimate(scores)
        assert est is not None and est.reliable and est.rows == 1000 and set(est.metrics) == {"accuracy", "f1", "roc_auc"}
        accuracy = float(np.mean((scores >= 0.5) == (labels == 1)))
        errors.append(abs(est.metrics["accuracy"].value - accuracy))
        covered += est.metrics["accuracy"].low <= accuracy <= est.metrics["accuracy"].high
        assert est.metrics["f1"].value == pytest.approx(f1_score(labels, scores >= 0.5), abs=0.05)
        assert est.metrics["roc_auc"].value == pytest.approx(roc_auc_score(labels, scores), abs=0.05)
    assert np.mean(errors) <= 0.03, errors  # the target on calibrated models
    assert covered >= 6  # a 95% band: most windows' realised accuracy falls inside it
    # The shift moves accuracy (far from the boundary the model is surer): the estimate follows it.
    far = estimator.estimate(binary_rows(rng, 1000, 2.0)[0]).metrics["accuracy"].value
    near = estimator.estimate(binary_rows(rng, 1000, 0.0)[0]).metrics["accuracy"].value
    assert far > near + 0.05


def test_a_miscalibrated_model_is_recalibrated_on_its_reference_and_its_raw_error_shown():
    rng = np.random.default_rng(1)
    ref_p, ref_labels = binary_rows(rng, 4000)
    # Overconfident: scores pushed towards 0 and 1, the same ranking (so the same decisions at 0.5).
    overconfident = lambda p: 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))  # noqa: E731
    estimator = PerformanceEstimator("binary", overconfident(ref_p), ref_labels)
    assert estimator.raw_calibration_error > 0.05 > estimator.calibration_error
    p, labels = binary_rows(rng, 1000, 0.5)
    est = estimator.estimate(overconfident(p))
    assert est.reliable
    assert est.metrics["accuracy"].value == pytest.approx(np.mean((p >= 0.5) == (labels == 1)), abs=0.04)


def test_too_few_reference_labels_mark_every_estimate_unreliable():
    rng = np.random.default_rng(2)
    scores, labels = binary_rows(rng, 120)
    estimator = PerformanceEstimator("binary", scores, labels)
    assert not estimator.available and "too few" in estimator.problem
    assert estimator.estimate(scores) is None
    noisy = PerformanceEstimator("binary", *binary_rows(rng, 400), max_calibration_error=0.001)
    est = noisy.estimate(binary_rows(rng, 500)[0])
    assert est is not None and not est.reliable and "calibration error" in est.reason
    assert est.calibration_error == noisy.calibration_error > 0.001


def test_what_cannot_be_estimated_says_why():
    rng = np.random.default_rng(3)
    scores, labels = binary_rows(rng, 1000)
    assert "regression" in PerformanceEstimator("regression", scores, labels).problem
    assert "no labels" in PerformanceEstimator("binary", scores, None).problem
    estimator = PerformanceEstimator("binary", scores, labels)
    assert estimator.estimate(np.array([np.nan, np.inf])) is None  # no finite score: no estimate, no error
    est = estimator.estimate(np.r_[scores[:300], [np.nan, np.inf, -np.inf]])
    assert est.rows == 300


def test_multiclass_accuracy_from_the_top_probability():
    rng = np.random.default_rng(4)

    def rows(n: int, sharpness: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits = rng.normal(0, sharpness, (n, 3))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        truth = np.array([rng.choice(3, p=row) for row in p])
        return p.max(axis=1), p.argmax(axis=1), truth

    top, predicted, truth = rows(3000, 1.5)
    estimator = PerformanceEstimator("multiclass", top, truth, reference_predicted=predicted)
    assert estimator.available and not estimator.problem
    for sharpness in (1.5, 0.7, 3.0):
        top, predicted, truth = rows(1000, sharpness)
        est = estimator.estimate(top)
        assert set(est.metrics) == {"accuracy"}
        assert est.metrics["accuracy"].value == pytest.approx(np.mean(predicted == truth), abs=0.04)


def test_expected_calibration_error():
    p = np.linspace(0.05, 0.95, 1000)
    rng = np.random.default_rng(5)
    assert expected_calibration_error(p, rng.random(1000) < p) < 0.05
    assert expected_calibration_error(p, np.ones(1000)) == pytest.approx(1 - p.mean(), abs=0.01)


def test_multiclass_with_every_class_probability_estimates_macro_f1_and_roc_auc():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(11)

    def rows(n: int, sharpness: float, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        logits = rng.normal(0, sharpness, (n, 4)) + np.array([shift, 0.0, 0.0, 0.0])
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        truth = (rng.random((n, 1)) > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)  # calibrated by construction
        return p, truth

    p, truth = rows(4000, 1.5)
    estimator = PerformanceEstimator("multiclass", p.max(axis=1), truth, reference_predicted=p.argmax(axis=1),
                                     reference_probabilities=p)
    assert estimator.available and not estimator.problem
    for sharpness, shift in ((1.5, 0.0), (0.8, 0.0), (1.5, 1.0)):  # as the reference, less sure, one class commoner
        window, labels = rows(2000, sharpness, shift)
        est = estimator.estimate(window.max(axis=1), window)
        assert set(est.metrics) == {"accuracy", "f1_macro", "roc_auc_macro"}
        realised_f1 = f1_score(labels, window.argmax(axis=1), average="macro")
        realised_auc = roc_auc_score(labels, window, multi_class="ovr", average="macro")
        assert est.metrics["accuracy"].value == pytest.approx(np.mean(window.argmax(axis=1) == labels), abs=0.03)
        assert est.metrics["f1_macro"].value == pytest.approx(realised_f1, abs=0.04)
        assert est.metrics["roc_auc_macro"].value == pytest.approx(realised_auc, abs=0.03)
        assert est.metrics["f1_macro"].low <= est.metrics["f1_macro"].value <= est.metrics["f1_macro"].high
    # Without every class's probability (or with another model's classes), accuracy alone, as before.
    assert set(estimator.estimate(window.max(axis=1)).metrics) == {"accuracy"}
    assert set(estimator.estimate(window.max(axis=1), window[:, :3]).metrics) == {"accuracy"}
    # A row with a NaN probability is left out, not an error.
    window[0, 1] = np.nan
    assert estimator.estimate(window.max(axis=1), window).rows == len(window) - 1
