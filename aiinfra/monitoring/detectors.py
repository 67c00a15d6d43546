"""Feature and prediction drift between a reference sample and a window of served rows.

Per feature: a two-sample Kolmogorov-Smirnov test per numeric input and a chi-squared test on the
category counts per categorical one, with the multiple-testing correction (Bonferroni or
Benjamini-Hochberg FDR) across features; the statistics come from a backend
(``aiinfra.monitoring.statistics``: scipy by default, alibi-detect opt-in). Jointly: a maximum mean
discrepancy test on all inputs together (``aiinfra.monitoring.multivariate``), which sees changes in
how the inputs move together that no per-feature test sees. This module prepares the data for them
(column order, integer-encoded categories, missing values) and adds effect sizes per feature: a
p-value says a difference is real, an effect size says whether it is large. PSI (the industry's rule
of thumb), the Jensen-Shannon distance of the binned shares (0 to 1), and for numeric inputs the
Wasserstein distance in units of the reference's standard deviation.

No Ray here: ``monitoring.core.DriftMonitor`` owns one ``DriftDetector`` per model.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from aiinfra.errors import InvalidInput
from aiinfra.monitoring.multivariate import MMDTest, MultivariateDrift
from aiinfra.monitoring.statistics import Backend, Correction, make_tests

__all__ = [
    "MISSING",
    "Backend",
    "Correction",
    "DriftDetector",
    "DriftResult",
    "FeatureDrift",
    "MultivariateDrift",
    "detect_drift",
    "population_stability_index",
]

MISSING = "__missing__"  # the category a missing categorical value (None, NaN) is counted as
PREDICTION = "prediction"  # FeatureDrift.feature of the model-output test
_PSI_EPS = 1e-4  # floor of a bin's share, so an empty bin gives a large but finite PSI


class FeatureDrift(BaseModel):
    """One feature's test. ``drifted`` is after the multiple-testing correction across features.

    Effect sizes: ``psi``; ``js``, the Jensen-Shannon distance (base 2, 0 to 1) of the binned shares;
    ``wasserstein`` (numeric only), the earth mover's distance in reference standard deviations.
    """

    model_config = ConfigDict(extra="forbid")

    feature: str
    kind: Literal["numeric", "categorical"]
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float
    drifted: bool
    psi: float | None
    js: float | None = None
    wasserstein: float | None = None
    n_reference: int
    n_window: int


class DriftResult(BaseModel):
    """The verdict on one window.

    ``drift`` is the inputs' verdict: a feature drifted after the correction, or the multivariate test
    rejected (``multivariate``). With the multivariate test, each of the two gets ``alpha / 2`` (so the
    verdict's false-alarm rate stays at most ``alpha``). Prediction drift is a separate, uncorrected test
    at ``alpha``, reported in ``prediction``. ``notes`` name what could not be tested and why.
    """

    model_config = ConfigDict(extra="forbid")

    features: list[FeatureDrift]
    drifted_features: list[str]
    share_drifted: float
    prediction: FeatureDrift | None
    drift: bool
    alpha: float
    correction: Correction
    backend: Backend = "alibi"  # reports stored before the scipy backend existed were alibi's
    multivariate: MultivariateDrift | None = None
    notes: list[str] = []


# -- PSI ------------------------------------------------------------------------------------
def _categories(values: Any) -> pd.Series:
    """Values as an object Series with every missing value replaced by ``MISSING``."""
    s = pd.Series(values, copy=False).astype(object)
    return s.where(s.notna(), MISSING)


def _numeric(values: Any) -> np.ndarray:
    """Floats; anything that is not a number becomes NaN."""
    return pd.to_numeric(pd.Series(values, copy=False), errors="coerce").to_numpy(dtype=np.float64)


def _quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles; repeated edges (discrete data) merged."""
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))


def _binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    values = values[np.isfinite(values)]
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    return counts / max(values.size, 1)


def _psi(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    r = np.clip(ref_share, _PSI_EPS, None)
    c = np.clip(cur_share, _PSI_EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _category_shares(values: pd.Series, categories: Sequence[Hashable]) -> np.ndarray:
    counts = values.value_counts()
    shares = np.array([counts.get(c, 0) for c in categories], dtype=np.float64)
    return shares / max(len(values), 1)


def population_stability_index(
    ref: Any, cur: Any, *, kind: Literal["numeric", "categorical"], bins: int = 10
) -> float:
    """PSI = sum over bins of (cur - ref) * ln(cur / ref), shares floored at 1e-4.

    Numeric: ``bins`` bins at the reference's quantiles (so each holds about 1/bins of it),
    open-ended at both sides; NaN values are left out. Categorical: one bin per category seen
    in either sample, so a category new in ``cur`` counts; missing values are their own category.
    Rule of thumb: < 0.1 stable, 0.1 to 0.25 moderate, > 0.25 large.
    """
    if bins < 2:
        raise InvalidInput(f"bins must be at least 2, got {bins}")
    if kind == "numeric":
        r, c = _numeric(ref), _numeric(cur)
        if not np.isfinite(r).any() or not np.isfinite(c).any():
            raise InvalidInput("PSI needs at least one finite value on each side")
        edges = _quantile_edges(r, bins)
        return _psi(_binned_shares(r, edges), _binned_shares(c, edges))
    if kind == "categorical":
        r_cat, c_cat = _categories(ref), _categories(cur)
        if r_cat.empty or c_cat.empty:
            raise InvalidInput("PSI needs at least one value on each side")
        cats = list(dict.fromkeys([*r_cat.unique(), *c_cat.unique()]))
        return _psi(_category_shares(r_cat, cats), _category_shares(c_cat, cats))
    raise InvalidInput(f"kind must be 'numeric' or 'categorical', got {kind!r}")


# -- the detector ---------------------------------------------------------------------------
def _finite_scores(name: str, scores: Any) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise InvalidInput(f"{name} holds no finite value")
    return arr


def _p_value(value: Any) -> float:
    """A p-value for the report; NaN (a degenerate test) reads as 1.0, no evidence, since JSON has no NaN."""
    out = float(value)
    return out if math.isfinite(out) else 1.0


class DriftDetector:
    """Tests windows against one reference sample; build it once and call ``check`` per window.

    Args:
        reference: the rows the model was trained or validated on (at least the listed columns).
        numeric: columns tested with KS.
        categorical: columns tested with chi-squared on category counts.
        alpha: significance level, before the correction across features.
        correction: ``"bonferroni"`` (family-wise error at most ``alpha``) or ``"fdr"``
            (Benjamini-Hochberg, expected share of false discoveries at most ``alpha``).
        reference_scores: the model's outputs on reference rows; enables the prediction test.
        backend: where the per-feature statistics come from: ``"scipy"`` (the default) or ``"alibi"``
            (alibi-detect, opt-in: see ``aiinfra.monitoring.statistics`` for its licence).
        multivariate: also run the MMD test on all inputs together.
        seed: seeds the multivariate test's subsample, features and permutations.

    A numeric reference column with no finite value cannot be tested; it is left out and named in every
    result's ``notes`` (a monitor must still start for the other inputs).

    Raises:
        InvalidInput: empty reference, no testable feature, a column listed twice or missing, or a bad
            ``alpha``/``correction``/``backend``.
    """

    def __init__(
        self,
        reference: pd.DataFrame,
        *,
        numeric: Sequence[str],
        categorical: Sequence[str],
        alpha: float = 0.05,
        correction: Correction = "bonferroni",
        reference_scores: np.ndarray | Sequence[float] | None = None,
        backend: Backend = "scipy",
        multivariate: bool = True,
        seed: int = 0,
    ) -> None:
        numeric = [str(c) for c in numeric]
        self.categorical = [str(c) for c in categorical]
        listed = numeric + self.categorical
        if not listed:
            raise InvalidInput("drift detection needs at least one numeric or categorical feature")
        twice = sorted({c for c in listed if listed.count(c) > 1})
        if twice:
            raise InvalidInput(f"features listed more than once (numeric and categorical?): {twice}")
        if not 0 < alpha < 1:
            raise InvalidInput(f"alpha must be in (0, 1), got {alpha}")
        if correction not in ("bonferroni", "fdr"):
            raise InvalidInput(f"correction must be 'bonferroni' or 'fdr', got {correction!r}")
        if backend not in ("scipy", "alibi"):
            raise InvalidInput(f"backend must be 'scipy' or 'alibi', got {backend!r}")
        if reference is None or len(reference) == 0:
            raise InvalidInput("the reference data is empty")
        missing = [c for c in listed if c not in reference.columns]
        if missing:
            raise InvalidInput(f"reference lacks the columns {missing}")
        self.alpha = float(alpha)
        self.correction: Correction = correction
        self.backend: Backend = backend
        self.n_reference = len(reference)
        self.notes: list[str] = []

        # Numeric: NaN imputed with the reference median, because the tests need a full matrix. A window
        # that suddenly has many missing values then shows a spike at the median, which KS flags: more
        # missing values is drift worth seeing.
        self.numeric: list[str] = []
        self._medians: dict[str, float] = {}
        self._edges: dict[str, np.ndarray] = {}
        self._ref_bin_shares: dict[str, np.ndarray] = {}
        self._ref_values: dict[str, np.ndarray] = {}
        self._ref_sd: dict[str, float] = {}
        for col in numeric:
            values = _numeric(reference[col])
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                self.notes.append(f"{col!r} not tested: the reference has no finite value in it")
                continue
            self.numeric.append(col)
            self._medians[col] = float(np.median(finite))
            self._edges[col] = _quantile_edges(values, 10)
            self._ref_bin_shares[col] = _binned_shares(values, self._edges[col])
            self._ref_values[col] = finite
            self._ref_sd[col] = float(finite.std())
        self.columns = self.numeric + self.categorical
        if not self.columns:
            raise InvalidInput("no feature can be tested: " + "; ".join(self.notes))

        # Categorical: codes 0..k-1 for the reference's categories (missing is one of them when
        # present); every category the reference never had maps to code k, so a new category
        # is counted by the chi-squared test (as drift) instead of being an error.
        self._codes: dict[str, dict[Hashable, int]] = {}
        self._ref_cat_shares: dict[str, np.ndarray] = {}
        for col in self.categorical:
            cats = _categories(reference[col])
            known = list(dict.fromkeys(cats.tolist()))
            self._codes[col] = {c: i for i, c in enumerate(known)}
            self._ref_cat_shares[col] = np.append(_category_shares(cats, known), 0.0)

        x_ref = self._matrix(reference)
        n_num = len(self.numeric)
        categories = {n_num + j: len(self._codes[col]) for j, col in enumerate(self.categorical)}

        self._ref_scores: np.ndarray | None = None
        if reference_scores is not None:
            self._ref_scores = _finite_scores("reference_scores", reference_scores)
            self._score_edges = _quantile_edges(self._ref_scores, 10)
            self._ref_score_shares = _binned_shares(self._ref_scores, self._score_edges)
        # With the joint test, the window's input verdict is two tests (the per-feature family, MMD) and alpha
        # is split between them (Bonferroni), so a stationary window is still flagged at most alpha of the time.
        family_alpha = self.alpha / 2 if multivariate else self.alpha
        self._tests = make_tests(backend, x_ref, categories, alpha=family_alpha, correction=correction,
                                 ref_scores=self._ref_scores)
        self.licence = self._tests.licence
        self._joint = MMDTest(x_ref, categories, alpha=self.alpha / 2, seed=seed) if multivariate else None

    def _require_columns(self, frame: pd.DataFrame, what: str) -> None:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise InvalidInput(f"{what} lacks the columns {missing}")

    def _encode(self, col: str, values: Any) -> np.ndarray:
        codes = self._codes[col]
        return _categories(values).map(codes).fillna(len(codes)).to_numpy(dtype=np.float64)

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """Features in detector order: numeric (NaN -> reference median), then category codes."""
        out = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        for j, col in enumerate(self.numeric):
            values = _numeric(frame[col])
            out[:, j] = np.where(np.isfinite(values), values, self._medians[col])
        for j, col in enumerate(self.categorical, start=len(self.numeric)):
            out[:, j] = self._encode(col, frame[col])
        return out

    def _shares(self, col: str, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reference shares, window shares) over the same bins (numeric) or categories (categorical)."""
        if col in self._edges:
            return self._ref_bin_shares[col], _binned_shares(column, self._edges[col])
        n_codes = len(self._codes[col]) + 1
        return self._ref_cat_shares[col], np.bincount(column.astype(np.int64), minlength=n_codes) / max(column.size, 1)

    def _feature(self, col: str, column: np.ndarray, finite: np.ndarray | None, p_value: float, statistic: float,
                 cut: float) -> FeatureDrift:
        """``finite``: a numeric column's finite window values (before imputation), None for a categorical one."""
        numeric = col in self._edges
        ref_share, cur_share = self._shares(col, column)
        wasserstein = None
        if numeric and finite is not None:
            values = finite
            if values.size:
                # In reference standard deviations, so one threshold reads the same for every input.
                # scipy inside: a heavy import, loaded only where windows are tested (statistics.py says why).
                from scipy.stats import wasserstein_distance

                wasserstein = float(wasserstein_distance(self._ref_values[col], values) / max(self._ref_sd[col], 1e-12))
        return FeatureDrift(
            feature=col,
            kind="numeric" if numeric else "categorical",
            test="ks" if numeric else "chi2",
            statistic=float(statistic),
            p_value=_p_value(p_value),
            drifted=bool(p_value < cut),
            psi=_psi(ref_share, cur_share),
            js=_js(ref_share, cur_share),
            wasserstein=wasserstein,
            n_reference=self.n_reference,
            n_window=len(column),
        )

    def check(
        self, window: pd.DataFrame, window_scores: np.ndarray | Sequence[float] | None = None
    ) -> DriftResult:
        """Test one window of rows (and optionally the model's scores on them) against the reference.

        Raises:
            InvalidInput: the window is empty or lacks a feature column, or scores are given but
                the detector has no reference scores.
        """
        if window is None or len(window) == 0:
            raise InvalidInput("the window is empty")
        self._require_columns(window, "the window")
        x = self._matrix(window)
        p_values, statistics, cut = self._tests.features(x)
        finite = {}
        for col in self.numeric:  # converted once: the effect sizes and the notes both need the raw values
            values = _numeric(window[col])
            finite[col] = values[np.isfinite(values)]
        features = [self._feature(col, x[:, j], finite.get(col), p_values[j], statistics[j], cut)
                    for j, col in enumerate(self.columns)]
        notes = list(self.notes)
        notes += [f"{col!r}: no finite value in the window (tested as all missing)"
                  for col in self.numeric if finite[col].size == 0]
        drifted = [f.feature for f in features if f.drifted]
        joint = self._joint.check(x) if self._joint is not None else None
        return DriftResult(
            features=features,
            drifted_features=drifted,
            share_drifted=len(drifted) / len(features),
            prediction=self._check_scores(window_scores),
            drift=bool(drifted) or bool(joint is not None and joint.drifted),
            alpha=self.alpha,
            correction=self.correction,
            backend=self.backend,
            multivariate=joint,
            notes=notes,
        )

    def _check_scores(self, window_scores: Any) -> FeatureDrift | None:
        if window_scores is None:
            return None
        if self._ref_scores is None:
            raise InvalidInput("window_scores given, but the detector was built without reference_scores")
        scores = _finite_scores("window_scores", window_scores)
        statistic, p = self._tests.scores(scores)
        p = _p_value(p)
        ref_share, cur_share = self._ref_score_shares, _binned_shares(scores, self._score_edges)
        return FeatureDrift(
            feature=PREDICTION,
            kind="numeric",
            test="ks",
            statistic=statistic,
            p_value=p,
            drifted=bool(p < self.alpha),  # one test: no correction
            psi=_psi(ref_share, cur_share),
            js=_js(ref_share, cur_share),
            n_reference=int(self._ref_scores.size),
            n_window=int(scores.size),
        )


def _js(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2: 0 same, 1 disjoint) of two share vectors over the same bins."""
    if ref_share.sum() <= 0 or cur_share.sum() <= 0:
        return 0.0
    from scipy.spatial.distance import jensenshannon  # inside: see _feature


    out = float(jensenshannon(ref_share, cur_share, base=2))
    return out if math.isfinite(out) else 0.0


def detect_drift(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    alpha: float = 0.05,
    correction: Correction = "bonferroni",
    reference_scores: np.ndarray | None = None,
    window_scores: np.ndarray | None = None,
    backend: Backend = "scipy",
    multivariate: bool = True,
) -> DriftResult:
    """One-off test of ``window`` against ``reference``; to test many windows, keep a ``DriftDetector``."""
    detector = DriftDetector(
        reference,
        numeric=numeric,
        categorical=categorical,
        alpha=alpha,
        correction=correction,
        reference_scores=reference_scores,
        backend=backend,
        multivariate=multivariate,
    )
    return detector.check(window, window_scores)
