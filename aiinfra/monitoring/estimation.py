"""Performance before labels: confidence-based performance estimation (CBPE) per window.

A calibrated classifier's probabilities say how often it is right: a row scored 0.9 is class 1 nine
times in ten. Over a window, the expected accuracy is the mean probability that each row's
predicted class is its true one, and the expected confusion matrix (hence F1) and ROC-AUC follow
the same way; labels are not needed. This is NannyML's CBPE (nannyml.com/docs, "Confidence-based
Performance Estimation"), here in the serving loop, with no dependency (NannyML has shipped only
dependency updates since 2024).

Calibration is what it rests on, so it is fitted and checked on the version's reference profile
(holdout rows with labels, ``aiinfra.monitoring.profile``): an isotonic map from the model's score
to the probability of being right, fitted on the reference, and the expected calibration error
(ECE, 10 equal-width bins) of that map measured by 2-fold cross-fitting on the same rows. When that
error is above ``max_calibration_error`` (or the reference has too few labelled rows), every
estimate is marked ``reliable: false`` with the error, not shown as fact. CBPE assumes the
relationship between inputs and label holds (no concept drift): it estimates the effect of
covariate shift; the error-stream detector (``aiinfra.monitoring.concept``) watches the rest.

Binary: estimated accuracy, F1 (positive class at threshold 0.5) and ROC-AUC. Accuracy's band is
its analytic 95% interval (a sum of Bernoulli variables); F1's and ROC-AUC's come from
``draws`` simulated label sets. Multiclass, with every class's probability (the reference profile keeps
them, and a window has them when the replicas ship them): each class's probability calibrated one
against the rest (isotonic, as NannyML's multiclass CBPE does) and the rows renormalized; estimated
accuracy, macro F1 and macro one-vs-rest ROC-AUC, F1's and ROC-AUC's from label sets drawn from the
calibrated rows. Multiclass with the top class's probability only: estimated accuracy alone. Regression:
not estimated. Its counterpart, direct loss estimation,
needs a second model of the loss fitted per version; the realised RMSE/MAE once labels arrive
stay the signal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from aiinfra.monitoring.statistics import mean_ranks

__all__ = ["MIN_REFERENCE_LABELS", "Estimate", "PerformanceEstimate", "PerformanceEstimator",
           "expected_calibration_error"]

MIN_REFERENCE_LABELS = 200
Z95 = 1.959964


class Estimate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    low: float
    high: float


class PerformanceEstimate(BaseModel):
    """One window's estimated performance. ``reliable`` is false when calibration does not hold up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "cbpe"
    rows: int
    metrics: dict[str, Estimate]
    reliable: bool
    calibration_error: float | None
    reason: str = ""
    baseline: dict[str, float] = {}  # the version's registered values of the estimated metrics
    # The rows that arrived in the window's span, when it tested a sample of ``rows`` of them
    # (monitoring.min_window_seconds): the estimate stands for all of them, and their labels check it.
    rows_seen: int | None = None


def expected_calibration_error(probability: np.ndarray, outcome: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over equal-width probability bins, weighted by rows."""
    probability, outcome = np.asarray(probability, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    if probability.size == 0:
        return math.nan
    which = np.minimum((probability * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.sum() * abs(outcome[mask].mean() - probability[mask].mean())
    return float(error / probability.size)


def _isotonic(score: np.ndarray, outcome: np.ndarray) -> Any:
    # Here, not at the top: scikit-learn takes most of a second to import, and every serving replica imports
    # this package (through the monitor's client) without estimating anything.
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, outcome)


class PerformanceEstimator:
    """Fitted once per reference; ``estimate`` per window.

    Args:
        task: binary, multiclass or regression.
        reference_scores: the model's score per reference row (P(class 1), or the top class's probability).
        reference_labels: the true class index per reference row (None: nothing to calibrate on).
        reference_predicted: multiclass: the predicted class index per row (argmax); binary: derived.
        max_calibration_error: above it, estimates are marked unreliable.
        baseline: the version's registered metrics, carried on each estimate (the autopilot compares).
        draws: simulated label sets for F1's and ROC-AUC's estimate and band.
        seed: seeds the simulation (the same window gets the same estimate).
    """

    def __init__(self, task: str, reference_scores: np.ndarray, reference_labels: np.ndarray | None, *,
                 reference_predicted: np.ndarray | None = None, reference_probabilities: np.ndarray | None = None,
                 max_calibration_error: float = 0.05, draws: int = 200, seed: int = 0,
                 baseline: Mapping[str, float] | None = None) -> None:
        self.task, self.draws, self.seed = task, draws, seed
        self.baseline = {k: float(v) for k, v in (baseline or {}).items()}
        self.max_calibration_error = max_calibration_error
        self.calibration_error: float | None = None
        self.raw_calibration_error: float | None = None
        self._calibrator: Any = None
        self._class_calibrators: list[Any] = []  # multiclass with probabilities: one per class, one against the rest
        self.problem = ""
        if task not in ("binary", "multiclass"):
            self.problem = f"performance is not estimated for {task} models (no labels: see realised RMSE/MAE)"
            return
        if reference_labels is None:
            self.problem = "the version's reference has no labels to calibrate on (registered without a profile)"
            return
        scores = np.asarray(reference_scores, dtype=np.float64)
        labels = np.asarray(reference_labels, dtype=np.float64)
        keep = np.isfinite(scores) & np.isfinite(labels)
        scores, labels = scores[keep], labels[keep]
        if task == "binary":
            # The calibrated P(class 1): what the expected confusion matrix is built from.
            outcome = labels
        else:
            if reference_predicted is None:
                self.problem = "the reference carries no predicted classes"
                return
            outcome = (np.asarray(reference_predicted, dtype=np.float64)[keep] == labels).astype(np.float64)
        if scores.size < MIN_REFERENCE_LABELS or len(np.unique(outcome)) < 2:
            self.problem = (f"{scores.size} labelled reference rows (both outcomes needed, at least "
                            f"{MIN_REFERENCE_LABELS}): too few to check calibration")
            return
        self.raw_calibration_error = expected_calibration_error(scores, outcome)
        self.calibration_error = self._cross_fitted_error(scores, outcome)
        self._calibrator = _isotonic(scores, outcome)
        if task == "multiclass" and reference_probabilities is not None:
            probabilities = np.asarray(reference_probabilities, dtype=np.float64)[keep]
            truth = labels.astype(np.int64)
            if probabilities.ndim == 2 and probabilities.shape[1] >= 2 and np.isfinite(probabilities).all():
                self._class_calibrators = [_isotonic(probabilities[:, k], (truth == k).astype(np.float64))
                                           for k in range(probabilities.shape[1])]
        if self.calibration_error > max_calibration_error:
            self.problem = (f"calibration error {self.calibration_error:.3f} on the reference is above "
                            f"{max_calibration_error:g}: estimates are unreliable")

    def _cross_fitted_error(self, scores: np.ndarray, outcome: np.ndarray) -> float:
        """The calibrated map's ECE on rows it was not fitted on: 2 folds, each fitted on the other."""
        fold = np.random.default_rng(self.seed).permutation(scores.size) % 2 == 0
        calibrated = np.empty_like(scores)
        for part in (fold, ~fold):
            calibrated[part] = _isotonic(scores[~part], outcome[~part]).predict(scores[part])
        return expected_calibration_error(calibrated, outcome)

    @property
    def classes(self) -> int:
        """Multiclass with every class's probability calibrated: how many classes (0 otherwise)."""
        return len(self._class_calibrators)

    @property
    def available(self) -> bool:
        return self._calibrator is not None

    def estimate(self, scores: np.ndarray, probabilities: np.ndarray | None = None) -> PerformanceEstimate | None:
        """The window's estimate from the model's scores on it (non-finite ones left out); None when not estimable.
        ``probabilities``: multiclass, every class's probability per row (rows, classes), when the window has them."""
        if self._calibrator is None:
            return None
        scores = np.asarray(scores, dtype=np.float64)
        finite = np.isfinite(scores)
        if probabilities is not None:
            probabilities = np.asarray(probabilities, dtype=np.float64)
            if probabilities.shape != (scores.size, len(self._class_calibrators)):
                probabilities = None  # not this model's classes (or not every row's): the top class's alone
            else:
                finite &= np.isfinite(probabilities).all(axis=1)
                probabilities = probabilities[finite]
        scores = scores[finite]
        if scores.size == 0:
            return None
        if self.task == "binary":
            metrics = self._binary(scores, np.clip(self._calibrator.predict(scores), 0.0, 1.0))
        elif probabilities is not None and self._class_calibrators:
            metrics = self._multiclass(probabilities)
        else:
            metrics = {"accuracy": _mean_of_bernoullis(np.clip(self._calibrator.predict(scores), 0.0, 1.0))}
        reliable = not self.problem
        return PerformanceEstimate(rows=int(scores.size), metrics=metrics, reliable=reliable,
                                   calibration_error=self.calibration_error, reason=self.problem,
                                   baseline={k: v for k, v in self.baseline.items() if k in metrics})

    def _binary(self, scores: np.ndarray, p1: np.ndarray) -> dict[str, Estimate]:
        predicted = scores >= 0.5  # the model's own decision, on its raw score
        correct = np.where(predicted, p1, 1.0 - p1)  # P(the predicted class is the true one)
        out = {"accuracy": _mean_of_bernoullis(correct)}
        # F1 and ROC-AUC are not sums of independent terms: simulate label sets from the calibrated
        # probabilities, seeded by the window (reproducible), and take the mean and the 2.5/97.5 percentiles.
        rng = np.random.default_rng([self.seed, scores.size, int(np.round(scores.sum() * 1e6)) % (2**32)])
        y = rng.random((self.draws, scores.size)) < p1  # (draws, rows)
        tp = (y & predicted).sum(axis=1)
        fp = (~y & predicted).sum(axis=1)
        fn = (y & ~predicted).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = 2 * tp / (2 * tp + fp + fn)
        out["f1"] = _from_draws(f1)
        # ROC-AUC by rank sums: the ranks of the (fixed) scores once, each draw's positives summed.
        ranks = mean_ranks(scores)
        n_pos = y.sum(axis=1)
        n_neg = scores.size - n_pos
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (y @ ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        out["roc_auc"] = _from_draws(auc)
        return out


    def _multiclass(self, raw: np.ndarray) -> dict[str, Estimate]:
        """Accuracy, macro F1 and macro one-vs-rest ROC-AUC from every class's probability per row."""
        calibrated = np.column_stack([np.clip(c.predict(raw[:, k]), 0.0, 1.0)
                                      for k, c in enumerate(self._class_calibrators)])
        total = calibrated.sum(axis=1, keepdims=True)
        # A row every calibrator put at 0 (outside what the reference saw): its raw probabilities stand.
        calibrated = np.where(total > 0, calibrated / np.where(total > 0, total, 1.0), raw / raw.sum(axis=1, keepdims=True))
        rows, classes = calibrated.shape
        predicted = raw.argmax(axis=1)  # the model's own decision, on its raw probabilities
        out = {"accuracy": _mean_of_bernoullis(calibrated[np.arange(rows), predicted])}
        rng = np.random.default_rng([self.seed, rows, int(np.round(raw.sum() * 1e6)) % (2**32)])
        # Each draw a label per row from its calibrated probabilities: (draws, rows) class indices.
        u = rng.random((self.draws, rows, 1))
        y = (u > np.cumsum(calibrated, axis=1)[None, :, :-1]).sum(axis=2)
        f1s, aucs = [], []
        for k in range(classes):
            is_k, said_k = y == k, predicted == k
            tp, fp = (is_k & said_k).sum(axis=1), (~is_k & said_k).sum(axis=1)
            fn = (is_k & ~said_k).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                f1s.append(2 * tp / (2 * tp + fp + fn))
                ranks = mean_ranks(raw[:, k])
                n_pos = is_k.sum(axis=1)
                aucs.append((is_k @ ranks - n_pos * (n_pos + 1) / 2) / (n_pos * (rows - n_pos)))
        with np.errstate(invalid="ignore"):
            # Macro: the mean over the classes a draw has (a class absent from a draw has no F1 or ROC-AUC).
            out["f1_macro"] = _from_draws(_nanmean(np.array(f1s)))
            out["roc_auc_macro"] = _from_draws(_nanmean(np.array(aucs)))
        return out


def _nanmean(values: np.ndarray) -> np.ndarray:
    """The mean over axis 0 of the finite values (NaN where none is)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    return np.where(count > 0, np.where(finite, values, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def _mean_of_bernoullis(p: np.ndarray) -> Estimate:
    value = float(p.mean())
    half = Z95 * math.sqrt(float(np.sum(p * (1 - p)))) / p.size
    return Estimate(value=value, low=max(0.0, value - half), high=min(1.0, value + half))


def _from_draws(values: np.ndarray) -> Estimate:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Estimate(value=0.0, low=0.0, high=0.0)
    low, high = np.percentile(values, [2.5, 97.5])
    return Estimate(value=float(values.mean()), low=float(low), high=float(high))
