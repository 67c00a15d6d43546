"""The drift tests' statistics behind one small interface, on two backends.

``ScipyTests`` (the default) runs a two-sample Kolmogorov-Smirnov test per numeric feature and a
chi-squared test on the category counts per categorical feature, with scipy, and applies the
multiple-testing correction itself. ``AlibiTests`` (``monitoring.detector: alibi``) hands the same
matrices to alibi-detect's ``TabularDrift`` and ``KSDrift``. alibi-detect has been under the Business
Source License 1.1 since 0.11.5: free for non-production use only, production use needs a licence
from Seldon. So it is opt-in, imported only when that backend is built, and named wherever it runs.

Both backends compute the same tests the same way (KS in its asymptotic form, chi-squared on the
union of the categories seen in the reference and the window, Yates' correction on 2x2 tables), so
on the same window they give the same p-values (alibi's are float32) and the same verdicts: the
tests in tests/unit/test_monitoring.py run on both.

Input: the detector's matrix, numeric columns first (missing values already imputed), then
categorical columns as integer codes (0..k-1 the reference's categories, k every unseen one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, Protocol

import numpy as np

__all__ = ["ALIBI_LICENCE", "AlibiTests", "Backend", "Correction", "ScipyTests", "UnivariateTests", "correction_cut", "make_tests", "mean_ranks", "roc_auc"]

Backend = Literal["scipy", "alibi"]
Correction = Literal["bonferroni", "fdr"]

ALIBI_LICENCE = ("alibi-detect is under the Business Source License 1.1 (since 0.11.5): free for non-production "
                 "use only; production use needs a commercial licence from Seldon")


class UnivariateTests(Protocol):
    """Per-feature tests of a window against the reference the tests were built with."""

    backend: Backend
    licence: str | None  # a licence a user must know about, or None

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(p-value per column, statistic per column, the corrected cut: a column drifted when p < cut)."""
        ...

    def scores(self, scores: np.ndarray) -> tuple[float, float]:
        """(KS statistic, p-value) of the model's scores on a window against those on the reference."""
        ...


def correction_cut(p_values: np.ndarray, alpha: float, correction: Correction) -> float:
    """The p-value below which a feature counts as drifted, across ``len(p_values)`` tests.

    Bonferroni: alpha / n (family-wise error at most alpha). FDR: Benjamini-Hochberg's step-up cut-off,
    the largest alpha * i / n with p_(i) below it (expected share of false discoveries at most alpha);
    -inf when no p-value passes, so nothing is rejected.
    """
    n = len(p_values)
    if n == 0:
        return -math.inf
    if correction == "bonferroni":
        return alpha / n
    thresholds = alpha * np.arange(1, n + 1) / n
    below = np.flatnonzero(np.sort(p_values) < thresholds)
    return float(thresholds[below.max()]) if below.size else -math.inf


class ScipyTests:
    """KS and chi-squared with scipy. ``categories``: column index -> number of reference codes."""

    backend: Backend = "scipy"
    licence = None

    def __init__(self, x_ref: np.ndarray, categories: Mapping[int, int], *, alpha: float, correction: Correction,
                 ref_scores: np.ndarray | None = None) -> None:
        # Here, not at the top: scipy.stats takes about half a second to import, and every serving replica
        # imports this package (through the monitor's client) without ever testing a window.
        from scipy.stats import chi2_contingency, ks_2samp

        self._chi2, self._ks = chi2_contingency, ks_2samp
        self.alpha, self.correction = alpha, correction
        self._x_ref = x_ref
        self._categorical = dict(categories)
        # Reference counts per category, unseen code included; the union with the window's is taken per test.
        self._ref_counts = {j: np.bincount(x_ref[:, j].astype(np.int64), minlength=k + 1)
                            for j, k in self._categorical.items()}
        self._ref_scores = ref_scores

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        n_features = self._x_ref.shape[1]
        p_values = np.ones(n_features)
        statistics = np.zeros(n_features)
        for j in range(n_features):
            if j in self._categorical:
                ref = self._ref_counts[j]
                cur = np.bincount(x[:, j].astype(np.int64), minlength=ref.size)
                seen = (ref + cur) > 0
                if seen.sum() < 2:  # one category on both sides: nothing to compare, no evidence
                    continue
                statistics[j], p_values[j], _, _ = self._chi2(np.vstack((ref[seen], cur[seen])))
            else:
                # The asymptotic distribution, as alibi-detect uses: scipy's default would compute the exact
                # one for samples this size, which costs far more and changes nothing at these sizes.
                result = self._ks(self._x_ref[:, j], x[:, j], method="asymp")
                statistics[j], p_values[j] = result.statistic, result.pvalue
        p_values = np.where(np.isfinite(p_values), p_values, 1.0)
        return p_values, statistics, correction_cut(p_values, self.alpha, self.correction)

    def scores(self, scores: np.ndarray) -> tuple[float, float]:
        if self._ref_scores is None:
            raise ValueError("built without reference scores")
        result = self._ks(self._ref_scores, scores, method="asymp")
        return float(result.statistic), float(result.pvalue)


class AlibiTests:
    """The same tests through alibi-detect (opt-in: see the module docstring for its licence)."""

    backend: Backend = "alibi"
    licence = ALIBI_LICENCE

    def __init__(self, x_ref: np.ndarray, categories: Mapping[int, int], *, alpha: float, correction: Correction,
                 ref_scores: np.ndarray | None = None) -> None:
        try:
            # Here, not at the top: the import takes seconds (it imports transformers), and only this backend needs it.
            from alibi_detect.cd import KSDrift, TabularDrift
        except ImportError as e:
            raise ImportError("monitoring.detector is 'alibi' but alibi-detect is not installed: "
                              "pip install 'aiinfra[alibi]' (mind its licence), or use the default 'scipy'") from e
        # Only the reference's codes are declared: TabularDrift counts the union with the window's codes at
        # test time, so the unseen code joins the table only when it occurs (declared up front it would give
        # an all-zero column, which chi-squared rejects). An empty dict (all numeric) does not warn, None does.
        self._tabular = TabularDrift(x_ref, p_val=alpha, correction=correction,
                                     categories_per_feature={j: list(range(k)) for j, k in categories.items()})
        self._scores = None if ref_scores is None else KSDrift(ref_scores.reshape(-1, 1), p_val=alpha)

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        # drift_type="batch" is where alibi applies the correction: it returns the corrected threshold
        # (alpha / n for Bonferroni, the Benjamini-Hochberg cut-off for FDR).
        out = self._tabular.predict(x, drift_type="batch", return_p_val=True, return_distance=True)["data"]
        threshold = out["threshold"]
        # FDR with nothing significant returns the array of step-up thresholds: nothing is rejected.
        cut = float(threshold) if np.ndim(threshold) == 0 else -math.inf
        p_values = np.asarray(out["p_val"], dtype=np.float64)
        return (np.where(np.isfinite(p_values), p_values, 1.0),
                np.nan_to_num(np.asarray(out["distance"], dtype=np.float64)), cut)

    def scores(self, scores: np.ndarray) -> tuple[float, float]:
        if self._scores is None:
            raise ValueError("built without reference scores")
        out = self._scores.predict(scores.reshape(-1, 1), return_p_val=True, return_distance=True)["data"]
        return float(np.ravel(out["distance"])[0]), float(np.ravel(out["p_val"])[0])


def make_tests(backend: Backend, x_ref: np.ndarray, categories: Mapping[int, int], *, alpha: float,
               correction: Correction, ref_scores: np.ndarray | None = None) -> UnivariateTests:
    if backend == "scipy":
        return ScipyTests(x_ref, categories, alpha=alpha, correction=correction, ref_scores=ref_scores)
    if backend == "alibi":
        return AlibiTests(x_ref, categories, alpha=alpha, correction=correction, ref_scores=ref_scores)
    raise ValueError(f"unknown drift detector backend {backend!r}: use 'scipy' or 'alibi'")


def mean_ranks(scores: np.ndarray) -> np.ndarray:
    """Each score's rank (1 = lowest), ties sharing their mean rank, as ROC-AUC counts them."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size)
    ranks[order] = np.arange(1, scores.size + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by rank sums (Mann-Whitney): scikit-learn's ``roc_auc_score`` to rounding, without its
    per-call validation, which cost the monitor more than the sums (it runs at every gauge update).
    ``positive``: booleans; NaN when one class is missing."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    return float((mean_ranks(np.asarray(scores, dtype=np.float64))[positive].sum() - n_pos * (n_pos + 1) / 2)
                 / (n_pos * n_neg))
