"""Fitting the transforms without holding the rows: the statistics a FeatureSpec needs, computed batch by
batch and merged, over as many passes as the spec's chains need.

``fit_features`` (transforms.py) fits on a DataFrame in memory. ``fit_in_passes`` fits the same spec from a
``Passes`` runner: a function that maps a statistic over every batch of the data and merges the partial
results. In memory that is a loop over slices of a frame (``frame_passes``); on a cluster it is Ray Data's
``map_batches`` with the merges done in tasks (``aiinfra.pipelines.training_table.dataset_passes``), so
the driver only ever holds the merged statistics.

What comes out is what ``fit_features`` gives on the same rows:
- exactly: categories and their order, most-frequent values, medians, minima and maxima, input dtypes;
- to the last few bits: means and standard deviations (a sum over batches is added in another order than
  numpy's pairwise sum over one array; the difference is a few units in the last place).

Medians are exact order statistics, found by narrowing a histogram: each pass counts the values per bin
of the current range, the bin holding the wanted rank becomes the range, and once a bin holds few enough
distinct values they are gathered and counted (``order_statistics``). One pass per step depth computes
the moments and counts; a median adds two or three.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd

from aiinfra.data.transforms import (
    UNKNOWN,
    Bucketize,
    Feature,
    FeaturePipeline,
    FeatureSpec,
    Impute,
    MinMax,
    OneHot,
    Standardize,
    _apply_numeric,
    _is_bool,
    _numeric,
    _texts,
)
from aiinfra.errors import InvalidInput

__all__ = ["Moments", "Passes", "fit_in_passes", "frame_passes", "order_statistics"]

T = TypeVar("T")


class Passes(Protocol):
    """One pass over the data: ``compute`` on every batch, the partial results combined with ``merge``.

    Returns None when there are no batches. ``merge`` must be associative: the runner may merge in any
    grouping (a tree of tasks), though it keeps the batches' order."""

    def __call__(self, compute: Callable[[pd.DataFrame], T], merge: Callable[[T, T], T]) -> T | None: ...


def frame_passes(frame: pd.DataFrame, batch_rows: int = 65_536) -> Passes:
    """Passes over slices of an in-memory frame (the reference the distributed runner is tested against)."""

    def run(compute: Callable[[pd.DataFrame], T], merge: Callable[[T, T], T]) -> T | None:
        out: T | None = None
        for start in range(0, len(frame), batch_rows):
            part = compute(frame.iloc[start:start + batch_rows])
            out = part if out is None else merge(out, part)
        return out

    return run


# -- mergeable statistics -----------------------------------------------------------------------
@dataclass
class Moments:
    """Count, mean, sum of squared deviations (Chan's parallel merge), min and max of the finite values."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def of(cls, finite: np.ndarray) -> Moments:
        if not len(finite):
            return cls()
        mean = float(finite.mean())
        return cls(len(finite), mean, float(((finite - mean) ** 2).sum()), float(finite.min()), float(finite.max()))

    def merge(self, other: Moments) -> Moments:
        if not other.n:
            return self
        if not self.n:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        return Moments(n, mean, m2, min(self.min, other.min), max(self.max, other.max))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 1.0


def _merge_counters(a: Counter, b: Counter) -> Counter:
    a.update(b)
    return a


def _merge_dicts(a: dict[Any, Any], b: dict[Any, Any], merge_value: Callable[[Any, Any], Any]) -> dict[Any, Any]:
    for key, value in b.items():
        a[key] = merge_value(a[key], value) if key in a else value
    return a


# -- exact order statistics ---------------------------------------------------------------------
_BINS = 4096
_GATHER = 100_000  # values in a bin gathered at once; above it, the bin is counted again, split
_ROUNDS = 4  # narrowings at most: 4096**4 bins span about 2**48, near a float's resolution


def _bin_of(values: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    """Each value's bin in [lo, hi]; the same expression in every pass, so a value never changes bin."""
    span = float(hi - lo)
    if span <= 0:
        return np.zeros(len(values), dtype=np.int64)
    index = np.floor((values - lo).astype(np.float64) / span * _BINS).astype(np.int64)
    return np.clip(index, 0, _BINS - 1)


def order_statistics(passes: Passes, values_of: Callable[[pd.DataFrame], np.ndarray], ranks: Sequence[int],
                     lo: Any, hi: Any) -> dict[int, Any]:
    """The exact ``rank``-th smallest (0-based) of the values ``values_of`` gives per batch, for each rank.

    ``lo`` and ``hi`` bound every value (from a moments pass); the values are finite floats or int64. Each
    round counts the values below a range and per bin inside it; a rank's bin is then gathered (its distinct
    values counted) when it holds at most ``_GATHER`` values or after ``_ROUNDS`` narrowings (by then a bin
    spans a few representable numbers), else it becomes the next round's range.
    """
    pending = {int(k): (lo, hi) for k in set(ranks)}
    found: dict[int, Any] = {}
    for round_ in range(_ROUNDS + 1):
        if not pending:
            break
        ranges = sorted(set(pending.values()))

        def histograms(df: pd.DataFrame, ranges: list[tuple[Any, Any]] = ranges) -> dict[tuple[Any, Any], Any]:
            v = values_of(df)
            out = {}
            for r_lo, r_hi in ranges:
                inside = v[(v >= r_lo) & (v <= r_hi)]
                out[(r_lo, r_hi)] = (int((v < r_lo).sum()), np.bincount(_bin_of(inside, r_lo, r_hi), minlength=_BINS))
            return out

        counted = passes(histograms, lambda a, b: _merge_dicts(a, b, lambda x, y: (x[0] + y[0], x[1] + y[1]))) or {}
        to_gather: dict[tuple[Any, Any, int], list[tuple[int, int]]] = {}  # (range, bin) -> [(rank, values below it)]
        narrowed: dict[int, tuple[Any, Any]] = {}
        for k, (r_lo, r_hi) in pending.items():
            below, hist = counted.get((r_lo, r_hi), (0, np.zeros(_BINS, dtype=np.int64)))
            cum = np.cumsum(hist)
            b = int(np.searchsorted(cum, k - below, side="right"))
            if k < below or b >= _BINS:
                raise AssertionError(f"rank {k} is outside the {below} + {int(cum[-1])} values counted: the data changed between passes")
            if hist[b] <= _GATHER or r_lo == r_hi or round_ == _ROUNDS:
                to_gather.setdefault((r_lo, r_hi, b), []).append((k, below + (int(cum[b - 1]) if b else 0)))
                continue
            width = float(r_hi - r_lo) / _BINS  # the bin's own range, a little wider: counted afresh next round
            b_lo, b_hi = r_lo + b * width, r_lo + (b + 1) * width
            if isinstance(r_lo, (int, np.integer)):
                b_lo, b_hi = max(int(r_lo), int(math.floor(b_lo)) - 1), min(int(r_hi), int(math.ceil(b_hi)) + 1)
            else:
                b_lo, b_hi = max(r_lo, float(np.nextafter(b_lo, -np.inf))), min(r_hi, float(np.nextafter(b_hi, np.inf)))
            narrowed[k] = (b_lo, b_hi)
        if to_gather:
            keys = list(to_gather)

            def gather(df: pd.DataFrame, keys: list[tuple[Any, Any, int]] = keys) -> dict[tuple[Any, Any, int], Counter]:
                v = values_of(df)
                out = {}
                for r_lo, r_hi, b in keys:
                    inside = v[(v >= r_lo) & (v <= r_hi)]
                    values, n = np.unique(inside[_bin_of(inside, r_lo, r_hi) == b], return_counts=True)
                    out[(r_lo, r_hi, b)] = Counter(dict(zip(values.tolist(), n.tolist())))
                return out

            gathered = passes(gather, lambda a, b: _merge_dicts(a, b, _merge_counters)) or {}
            for key, wanted in to_gather.items():
                values = sorted(gathered.get(key, Counter()).items())
                cum = np.cumsum([n for _, n in values])
                for k, below_bin in wanted:
                    found[k] = values[int(np.searchsorted(cum, k - below_bin, side="right"))][0]
        pending = narrowed
    return found


# -- fitting ------------------------------------------------------------------------------------
def _prefix_values(f: Feature, depth: int) -> Callable[[pd.DataFrame], np.ndarray]:
    """The numbers step ``depth`` of ``f`` is fitted on: the column through the (fitted) steps before it."""

    def values(df: pd.DataFrame) -> np.ndarray:
        v = _numeric(df, f.column)
        for step in f.steps[:depth]:
            v = _apply_numeric(step, v)
        return v

    return values


def _finite(v: np.ndarray) -> np.ndarray:
    return v[np.isfinite(v)]


def _dtype_of(column: pd.Series) -> str | None:
    """What ``fit_features`` would call this batch's column; None when it is all null, "Int64" for pandas'
    nullable integers (which hold nulls and stay integers in a whole frame too)."""
    if column.notna().sum() == 0:
        return None
    if _is_bool(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "Int64" if isinstance(column.dtype, pd.api.extensions.ExtensionDtype) else "int64"
    return "float64"


def _merged_dtype(kinds: set[str | None]) -> str:
    """One column's dtype over all batches, as the whole frame's pandas dtype gives it: numpy integers with
    a null anywhere (another batch is float, or all null) make a float column; all null is float."""
    if kinds <= {"bool", None} and "bool" in kinds:
        return "bool"
    if kinds == {"int64"} or ("Int64" in kinds and kinds <= {"int64", "Int64", None}):
        return "int64"
    return "float64"


def _needs_fit(step: Any) -> bool:
    return isinstance(step, (Standardize, MinMax)) or (isinstance(step, Impute) and step.strategy != "constant")


def fit_in_passes(spec: FeatureSpec, passes: Passes) -> FeaturePipeline:
    """Fit every step of ``spec`` from passes over the data; the result equals ``fit_features`` on the same rows
    (exactly, but for the last bits of means and standard deviations: see the module's note)."""
    fitted = spec.model_copy(deep=True)
    numeric = [f for f in fitted.features if f.kind == "numeric"]
    categorical = [f for f in fitted.features if f.kind == "categorical"]
    dtypes: dict[str, str] = {f.column: ("timestamp" if f.kind == "datetime" else "string")
                              for f in fitted.features if f.kind != "numeric"}
    columns = [f.column for f in fitted.features]

    # Pass 1: the columns are there; numeric dtypes; categorical value counts (None counts the nulls).
    def first(df: pd.DataFrame) -> dict[str, Any]:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise InvalidInput(f"cannot fit feature {missing[0]!r}: the data has no such column")
        out: dict[str, Any] = {}
        for f in numeric:
            out[f.column] = {_dtype_of(df[f.column])}
        for f in categorical:
            out[f.column] = Counter(_texts(df[f.column]))
        return out

    def merge_first(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        for key, value in b.items():
            if isinstance(value, Counter):
                a[key].update(value)
            else:
                a[key] = a[key] | value
        return a

    stats = passes(first, merge_first)
    if stats is None:
        raise InvalidInput("cannot fit the transforms: the training data has no rows")
    for f in numeric:
        dtypes[f.column] = _merged_dtype(stats[f.column])
    for f in categorical:
        _fit_categorical(f, stats[f.column])

    # One pass per step depth: moments and counts for each numeric step that learns something, on the
    # values the steps before it give; then the medians' order statistics.
    for d in range(max((len(f.steps) for f in numeric), default=0)):
        to_fit = []
        for f in numeric:
            chain = f.steps[:next((i for i, s in enumerate(f.steps) if isinstance(s, Bucketize)), len(f.steps))]
            if d < len(chain) and _needs_fit(chain[d]):
                to_fit.append((f, chain[d]))
        if not to_fit:
            continue
        getters = {f.column: _prefix_values(f, d) for f, _ in to_fit}
        wants_counts = {f.column for f, s in to_fit if isinstance(s, Impute) and s.strategy == "most_frequent"}

        def moments(df: pd.DataFrame, getters: dict[str, Any] = getters, wants_counts: set[str] = wants_counts) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for column, get in getters.items():
                finite = _finite(get(df))
                counts = None
                if column in wants_counts:
                    values, n = np.unique(finite, return_counts=True)
                    counts = Counter(dict(zip(values.tolist(), n.tolist())))
                out[column] = (Moments.of(finite), counts)
            return out

        def merge_moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
            for column, (m, counts) in b.items():
                am, ac = a[column]
                a[column] = (am.merge(m), _merge_counters(ac, counts) if ac is not None else None)
            return a

        merged = passes(moments, merge_moments) or {}
        medians = []
        for f, step in to_fit:
            m, counts = merged[f.column]
            if isinstance(step, Standardize):
                step.mean, step.std = (m.mean if m.n else 0.0), (m.std if m.n and m.std > 0 else 1.0)
            elif isinstance(step, MinMax):
                step.min, step.max = (m.min, m.max) if m.n else (0.0, 1.0)
            elif not m.n:
                step.fitted = 0.0
            elif step.strategy == "mean":
                step.fitted = m.mean
            elif step.strategy == "most_frequent":  # np.unique's order: the smallest of the most frequent
                top = max(counts.values())
                step.fitted = float(min(v for v, n in counts.items() if n == top))
            else:
                medians.append((f, step, m))
        for f, step, m in medians:
            get = getters[f.column]
            ranks = [(m.n - 1) // 2, m.n // 2]
            found = order_statistics(passes, lambda df, get=get: _finite(get(df)), ranks, m.min, m.max)
            a, b = (float(found[r]) for r in ranks)
            step.fitted = a if ranks[0] == ranks[1] else float(np.mean([a, b]))  # as np.median takes the middle pair
    return FeaturePipeline(spec=fitted, input_dtypes=dtypes)


def _fit_categorical(f: Feature, counts: Counter) -> None:
    """As ``fit_features``: imputes fill the nulls with a constant or the mode (the smallest text of the most
    frequent), then the categories: all of them (ordinal) or the most frequent ``max_categories``."""
    counts = Counter(counts)
    nulls = counts.pop(None, 0)
    for step in f.steps[:-1]:
        if step.strategy == "constant":
            step.fitted = str(step.value)
        elif counts:
            top = max(counts.values())
            step.fitted = min(v for v, n in counts.items() if n == top)
        else:
            step.fitted = UNKNOWN
        if nulls:
            counts[step.fitted] += nulls
            nulls = 0
    last = f.steps[-1]
    if isinstance(last, OneHot):  # by count, ties by text, as a stable sort of the sorted counts gives
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        last.categories = sorted(v for v, _ in ranked[:last.max_categories])
    else:
        last.categories = sorted(counts)
