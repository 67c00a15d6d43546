"""Feature and prediction drift between a reference sample and a window of served rows.

The statistical tests are alibi-detect's: ``TabularDrift`` runs a two-sample Kolmogorov-Smirnov test
per numeric feature and a chi-squared test on the category counts per categorical feature, and
applies the multiple-testing correction (Bonferroni or Benjamini-Hochberg FDR) across features.
This module prepares the data for it (column order, integer-encoded categories, missing values)
and adds the population stability index (PSI) per feature as an effect size: a p-value says a
difference is real, PSI says whether it is large.

``import alibi_detect`` takes seconds (it imports transformers), so it happens inside
``DriftDetector.__init__``, never when this module is imported.

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

__all__ = [
    "MISSING",
    "Correction",
    "DriftDetector",
    "DriftResult",
    "FeatureDrift",
    "detect_drift",
    "population_stability_index",
]

Correction = Literal["bonferroni", "fdr"]

MISSING = "__missing__"  # the category a missing categorical value (None, NaN) is counted as
PREDICTION = "prediction"  # FeatureDrift.feature of the model-output test
_PSI_EPS = 1e-4  # floor of a bin's share, so an empty bin gives a large but finite PSI


class FeatureDrift(BaseModel):
    """One feature's test. ``drifted`` is after the multiple-testing correction across features."""

    model_config = ConfigDict(extra="forbid")

    feature: str
    kind: Literal["numeric", "categorical"]
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float
    drifted: bool
    psi: float | None
    n_reference: int
    n_window: int


class DriftResult(BaseModel):
    """The verdict on one window.

    ``drift`` is the feature verdict only (any feature drifted after the correction); prediction
    drift is a separate, uncorrected test at ``alpha``, reported in ``prediction``.
    """

    model_config = ConfigDict(extra="forbid")

    features: list[FeatureDrift]
    drifted_features: list[str]
    share_drifted: float
    prediction: FeatureDrift | None
    drift: bool
    alpha: float
    correction: Correction


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

    Raises:
        InvalidInput: empty reference, no features, a column listed twice or missing, a numeric
            column with no finite value, or a bad ``alpha``/``correction``.
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
    ) -> None:
        self.numeric = [str(c) for c in numeric]
        self.categorical = [str(c) for c in categorical]
        self.columns = self.numeric + self.categorical
        if not self.columns:
            raise InvalidInput("drift detection needs at least one numeric or categorical feature")
        twice = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if twice:
            raise InvalidInput(f"features listed more than once (numeric and categorical?): {twice}")
        if not 0 < alpha < 1:
            raise InvalidInput(f"alpha must be in (0, 1), got {alpha}")
        if correction not in ("bonferroni", "fdr"):
            raise InvalidInput(f"correction must be 'bonferroni' or 'fdr', got {correction!r}")
        if reference is None or len(reference) == 0:
            raise InvalidInput("the reference data is empty")
        self._require_columns(reference, "reference")
        self.alpha = float(alpha)
        self.correction: Correction = correction
        self.n_reference = len(reference)

        # Numeric: NaN imputed with the reference median, because TabularDrift needs a full
        # matrix. A window that suddenly has many missing values then shows a spike at the
        # median, which KS flags: more missing values is drift worth seeing.
        self._medians: dict[str, float] = {}
        self._edges: dict[str, np.ndarray] = {}
        self._ref_bin_shares: dict[str, np.ndarray] = {}
        for col in self.numeric:
            values = _numeric(reference[col])
            if not np.isfinite(values).any():
                raise InvalidInput(f"reference column {col!r} has no finite numeric value")
            self._medians[col] = float(np.nanmedian(np.where(np.isfinite(values), values, np.nan)))
            self._edges[col] = _quantile_edges(values, 10)
            self._ref_bin_shares[col] = _binned_shares(values, self._edges[col])

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

        from alibi_detect.cd import KSDrift, TabularDrift  # lazy: the import takes seconds

        n_num = len(self.numeric)
        # Only the reference's codes are declared: TabularDrift counts the union with the
        # window's codes at test time, so the "unseen" code joins the table only when it occurs
        # (declaring it up front would give an all-zero column, which chi-squared rejects).
        categories = {n_num + j: list(range(len(self._codes[col]))) for j, col in enumerate(self.categorical)}
        # An empty dict (all numeric) is accepted and, unlike None, does not warn.
        self._tabular = TabularDrift(
            x_ref, p_val=self.alpha, categories_per_feature=categories, correction=correction
        )

        self._ref_scores: np.ndarray | None = None
        self._score_detector: Any = None
        if reference_scores is not None:
            self._ref_scores = _finite_scores("reference_scores", reference_scores)
            self._score_edges = _quantile_edges(self._ref_scores, 10)
            self._ref_score_shares = _binned_shares(self._ref_scores, self._score_edges)
            self._score_detector = KSDrift(self._ref_scores.reshape(-1, 1), p_val=self.alpha)

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

    def _psi(self, col: str, column: np.ndarray) -> float:
        if col in self._edges:
            return _psi(self._ref_bin_shares[col], _binned_shares(column, self._edges[col]))
        n_codes = len(self._codes[col]) + 1
        cur = np.bincount(column.astype(np.int64), minlength=n_codes) / max(column.size, 1)
        return _psi(self._ref_cat_shares[col], cur)

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
        # drift_type="batch" is where alibi applies the correction: it returns the corrected
        # threshold (alpha / n for Bonferroni, the Benjamini-Hochberg cut-off for FDR), while
        # drift_type="feature" compares each p-value with the uncorrected alpha.
        out = self._tabular.predict(x, drift_type="batch", return_p_val=True, return_distance=True)["data"]
        p_values, distances, threshold = out["p_val"], out["distance"], out["threshold"]
        # FDR with nothing significant returns the array of step-up thresholds: nothing is rejected.
        cut = float(threshold) if np.ndim(threshold) == 0 else -math.inf

        features = []
        for j, col in enumerate(self.columns):
            p = _p_value(p_values[j])
            numeric = col in self._edges
            features.append(
                FeatureDrift(
                    feature=col,
                    kind="numeric" if numeric else "categorical",
                    test="ks" if numeric else "chi2",
                    statistic=float(np.nan_to_num(distances[j])),
                    p_value=p,
                    drifted=bool(p < cut),
                    psi=self._psi(col, x[:, j]),
                    n_reference=self.n_reference,
                    n_window=len(window),
                )
            )
        drifted = [f.feature for f in features if f.drifted]
        return DriftResult(
            features=features,
            drifted_features=drifted,
            share_drifted=len(drifted) / len(features),
            prediction=self._check_scores(window_scores),
            drift=bool(drifted),
            alpha=self.alpha,
            correction=self.correction,
        )

    def _check_scores(self, window_scores: Any) -> FeatureDrift | None:
        if window_scores is None:
            return None
        if self._score_detector is None or self._ref_scores is None:
            raise InvalidInput("window_scores given, but the detector was built without reference_scores")
        scores = _finite_scores("window_scores", window_scores)
        out = self._score_detector.predict(scores.reshape(-1, 1), return_p_val=True, return_distance=True)[
            "data"
        ]
        p = _p_value(np.ravel(out["p_val"])[0])
        return FeatureDrift(
            feature=PREDICTION,
            kind="numeric",
            test="ks",
            statistic=float(np.ravel(out["distance"])[0]),
            p_value=p,
            drifted=bool(p < self.alpha),  # one test: no correction
            psi=_psi(self._ref_score_shares, _binned_shares(scores, self._score_edges)),
            n_reference=int(self._ref_scores.size),
            n_window=int(scores.size),
        )


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
) -> DriftResult:
    """One-off test of ``window`` against ``reference``; to test many windows, keep a ``DriftDetector``."""
    detector = DriftDetector(
        reference,
        numeric=numeric,
        categorical=categorical,
        alpha=alpha,
        correction=correction,
        reference_scores=reference_scores,
    )
    return detector.check(window, window_scores)
