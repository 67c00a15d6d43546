"""Dataset profiles, computed in the same streaming pass as validation.

Each batch yields a ``PartialProfile`` (exact count, nulls, mean and M2 for the variance,
min, max; category counts; a bottom-k content sample); partials merge in any order (Chan's
parallel variance), and ``finalize`` turns the merged partial into a ``DatasetProfile``.
Quantiles and histogram bins come from the sample: a sample of rows chosen by the smallest
row-content hashes, so it is uniform, the same for the same content however the data was
partitioned, and stored with the version as the drift monitor's reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

__all__ = ["ColumnProfile", "DatasetProfile", "PartialProfile", "profile_batch"]

SAMPLE_SIZE = 10_000
MAX_TRACKED_CATEGORIES = 10_000
TOP_K = 20
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 20


@dataclass
class NumericPartial:
    count: int = 0
    nulls: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def merge(self, o: NumericPartial) -> NumericPartial:
        n = self.count + o.count
        if n == 0:
            return NumericPartial(nulls=self.nulls + o.nulls)
        delta = o.mean - self.mean
        mean = self.mean + delta * o.count / n
        m2 = self.m2 + o.m2 + delta * delta * self.count * o.count / n
        return NumericPartial(n, self.nulls + o.nulls, mean, m2, min(self.min, o.min), max(self.max, o.max))


@dataclass
class CategoricalPartial:
    count: int = 0
    nulls: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    truncated: bool = False

    def merge(self, o: CategoricalPartial) -> CategoricalPartial:
        counts = dict(self.counts)
        for k, v in o.counts.items():
            counts[k] = counts.get(k, 0) + v
        truncated = self.truncated or o.truncated
        if len(counts) > MAX_TRACKED_CATEGORIES:
            counts = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_TRACKED_CATEGORIES])
            truncated = True
        return CategoricalPartial(self.count + o.count, self.nulls + o.nulls, counts, truncated)


@dataclass
class PartialProfile:
    rows: int = 0
    numeric: dict[str, NumericPartial] = field(default_factory=dict)
    categorical: dict[str, CategoricalPartial] = field(default_factory=dict)
    sample: pa.Table | None = None
    sample_keys: np.ndarray | None = None
    # Nulls of the columns with no statistics of their own (timestamps, dates, nested types): "always null" needs them.
    other_nulls: dict[str, int] = field(default_factory=dict)

    def merge(self, o: PartialProfile) -> PartialProfile:
        numeric = {k: self.numeric.get(k, NumericPartial()).merge(o.numeric.get(k, NumericPartial()))
                   for k in {*self.numeric, *o.numeric}}
        categorical = {k: self.categorical.get(k, CategoricalPartial()).merge(o.categorical.get(k, CategoricalPartial()))
                       for k in {*self.categorical, *o.categorical}}
        sample, keys = _merge_samples(self.sample, self.sample_keys, o.sample, o.sample_keys)
        other = {k: self.other_nulls.get(k, 0) + o.other_nulls.get(k, 0) for k in {*self.other_nulls, *o.other_nulls}}
        return PartialProfile(self.rows + o.rows, numeric, categorical, sample, keys, other)


def _merge_samples(a: pa.Table | None, ka: np.ndarray | None, b: pa.Table | None, kb: np.ndarray | None):
    if a is None or ka is None:
        return b, kb
    if b is None or kb is None:
        return a, ka
    table = pa.concat_tables([a, b], promote_options="default")
    keys = np.concatenate([ka, kb])
    return _bottom_k(table, keys)


def _bottom_k(table: pa.Table, keys: np.ndarray, k: int = SAMPLE_SIZE) -> tuple[pa.Table, np.ndarray]:
    if len(keys) <= k:
        order = np.argsort(keys, kind="stable")
    else:
        idx = np.argpartition(keys, k - 1)[:k]
        order = idx[np.argsort(keys[idx], kind="stable")]
    return table.take(pa.array(order)), keys[order]


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_categorical(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t) or pa.types.is_dictionary(t)


def profile_batch(table: pa.Table, row_hashes: np.ndarray) -> PartialProfile:
    """The partial profile of one batch; ``row_hashes`` (uint64 per row) choose the sample."""
    p = PartialProfile(rows=table.num_rows)
    for name in table.column_names:
        col = table.column(name)
        nulls = col.null_count
        if _is_numeric(col.type):
            values = col.drop_null().to_numpy().astype(np.float64)
            values = values[np.isfinite(values)]
            if len(values):
                mean = float(values.mean())
                p.numeric[name] = NumericPartial(len(values), nulls, mean, float(((values - mean) ** 2).sum()),
                                                 float(values.min()), float(values.max()))
            else:
                p.numeric[name] = NumericPartial(nulls=nulls)
        elif _is_categorical(col.type):
            counts = pc.value_counts(col.drop_null()).to_pylist()
            truncated = len(counts) > MAX_TRACKED_CATEGORIES
            if truncated:
                counts = sorted(counts, key=lambda c: -c["counts"])[:MAX_TRACKED_CATEGORIES]
            p.categorical[name] = CategoricalPartial(
                len(col) - nulls, nulls, {str(c["values"]): int(c["counts"]) for c in counts}, truncated
            )
        else:
            p.other_nulls[name] = nulls
    if table.num_rows:
        p.sample, p.sample_keys = _bottom_k(table, np.asarray(row_hashes, dtype=np.uint64))
    return p


class ColumnProfile(BaseModel):
    type: str
    count: int
    nulls: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    quantiles: dict[str, float] | None = None
    histogram: dict[str, list[float]] | None = None
    top: list[tuple[str, int]] | None = None
    distinct: int | None = None
    approximate: bool = False


class DatasetProfile(BaseModel):
    row_count: int
    sample_rows: int
    columns: dict[str, ColumnProfile]


def finalize(p: PartialProfile, schema: pa.Schema) -> DatasetProfile:
    sample_df: pd.DataFrame | None = p.sample.to_pandas() if p.sample is not None else None
    columns: dict[str, ColumnProfile] = {}
    for f in schema:
        name = f.name
        if name in p.numeric:
            n = p.numeric[name]
            quantiles = histogram = None
            if sample_df is not None and n.count:
                s = pd.to_numeric(sample_df[name], errors="coerce").dropna().to_numpy(dtype=np.float64)
                s = s[np.isfinite(s)]
                if len(s):
                    quantiles = {f"p{int(q * 100):02d}": float(np.quantile(s, q)) for q in QUANTILES}
                    counts, edges = np.histogram(s, bins=HISTOGRAM_BINS, range=(n.min, n.max) if n.max > n.min else None)
                    histogram = {"edges": edges.tolist(), "counts": counts.astype(float).tolist()}
            columns[name] = ColumnProfile(
                type=str(f.type), count=n.count, nulls=n.nulls,
                mean=n.mean if n.count else None,
                std=math.sqrt(n.m2 / n.count) if n.count else None,
                min=n.min if n.count else None, max=n.max if n.count else None,
                quantiles=quantiles, histogram=histogram,
            )
        elif name in p.categorical:
            c = p.categorical[name]
            top = sorted(c.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_K]
            columns[name] = ColumnProfile(type=str(f.type), count=c.count, nulls=c.nulls, top=top,
                                          distinct=len(c.counts), approximate=c.truncated)
        else:
            nulls = p.other_nulls.get(name, 0)
            columns[name] = ColumnProfile(type=str(f.type), count=p.rows - nulls, nulls=nulls)
    return DatasetProfile(row_count=p.rows, sample_rows=0 if p.sample is None else p.sample.num_rows, columns=columns)


def profile_diff(a: DatasetProfile, b: DatasetProfile) -> dict[str, Any]:
    """Per column, what changed between two profiles (a -> b)."""
    out: dict[str, Any] = {"row_count": [a.row_count, b.row_count], "columns": {}}
    for name in sorted({*a.columns, *b.columns}):
        ca, cb = a.columns.get(name), b.columns.get(name)
        if ca is None or cb is None:
            out["columns"][name] = {"only_in": "b" if ca is None else "a"}
            continue
        change: dict[str, Any] = {}
        for key in ("type", "count", "nulls", "mean", "std", "min", "max", "distinct"):
            va, vb = getattr(ca, key), getattr(cb, key)
            if va != vb:
                change[key] = [va, vb]
        if ca.mean is not None and cb.mean is not None and ca.std:
            change["mean_shift_in_std"] = round((cb.mean - ca.mean) / ca.std, 4)
        if ca.top is not None and cb.top is not None:
            ta, tb = dict(ca.top), dict(cb.top)
            new = sorted(set(tb) - set(ta))
            gone = sorted(set(ta) - set(tb))
            if new:
                change["new_top_categories"] = new
            if gone:
                change["dropped_top_categories"] = gone
        if change:
            out["columns"][name] = change
    return out
