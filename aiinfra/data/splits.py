"""Which rows train, which stop training early, which are held out: decided row by row.

A rule that looks at one row at a time puts each row on the same side whether the table is split in one
frame or batch by batch on a cluster, and needs no global sort or shuffle:

- held out: with a ``time_column``, every row at or after a threshold time, chosen so that the latest
  ``holdout_fraction`` of rows are held out (ties at the threshold and rows without a time are held out
  too); without one, the rows whose seeded hash falls in the first ``holdout_fraction`` of the hash range;
- validation: of the rest, the rows whose second seeded hash falls in the first ``validation_fraction``.

The hash is of the row's identity: the dataset's key columns when it declares a key, else the row's own
columns. Numbers are hashed as float64 and times as UTC nanoseconds, so an integer column that one batch
holds as int64 and another (with a null) as float64 hashes alike; identical rows land on the same side,
so a duplicated row never sits on both sides of the holdout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aiinfra.data.fitting import Passes, order_statistics
from aiinfra.data.transforms import _is_bool, _texts
from aiinfra.errors import InvalidInput

__all__ = ["HOLDOUT", "TRAIN", "VALIDATION", "SplitRule", "row_hash", "time_threshold", "times_ns"]

TRAIN, VALIDATION, HOLDOUT = 0, 1, 2
_NULL = "\x00null"
_MIX = np.uint64(0x100000001B3)  # FNV's 64-bit prime: mixes one column's hash into the row's


def times_ns(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(UTC nanoseconds as int64, the mask of missing times); naive times are taken as UTC."""
    ts = pd.to_datetime(pd.Series(values), utc=True, errors="coerce").dt.as_unit("ns")
    missing = ts.isna().to_numpy()
    return ts.to_numpy(dtype="datetime64[ns]").view(np.int64), missing


def _column_hash(column: pd.Series, key: str) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(column):
        ns, missing = times_ns(column)
        return pd.util.hash_array(np.where(missing, np.iinfo(np.int64).min, ns), hash_key=key)
    if pd.api.types.is_numeric_dtype(column) or _is_bool(column):  # bools with nulls come from Arrow as objects
        v = np.array([np.nan if x is None or x is pd.NA else float(x) for x in column.tolist()]) if column.dtype == object \
            else column.to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.util.hash_array(v + 0.0, hash_key=key)  # + 0.0: -0.0 and 0.0 alike
    texts = _texts(column)
    return pd.util.hash_array(np.array([_NULL if t is None else t for t in texts], dtype=object), hash_key=key)


def row_hash(frame: pd.DataFrame, columns: list[str], salt: str) -> np.ndarray:
    """A uint64 per row from ``columns``' values and ``salt``, the same whichever batch or frame the row is in.

    pandas' hash of a numeric array ignores its hash key, so the salt is mixed in here, after the columns
    (splitmix64's finalizer over the row's hash xor the salt's): two salts give unrelated hashes."""
    h = np.zeros(len(frame), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h = (h * _MIX) ^ _column_hash(frame[c], "0" * 16)
        x = h ^ np.uint64(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little"))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _unit(h: np.ndarray) -> np.ndarray:
    """A hash as a number in [0, 1): its top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclass(frozen=True)
class SplitRule:
    """The split, decided per row (see the module's note). ``time_threshold_ns`` None with a time column:
    every timed row trains."""

    holdout_fraction: float
    validation_fraction: float
    seed: int
    hash_columns: tuple[str, ...]
    time_column: str | None = None
    time_threshold_ns: int | None = None

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        """TRAIN, VALIDATION or HOLDOUT for each row of ``frame`` (int8)."""
        missing = [c for c in (*self.hash_columns, *([self.time_column] if self.time_column else [])) if c not in frame.columns]
        if missing:
            raise InvalidInput(f"cannot split the training table: it has no column(s) {', '.join(missing)}")
        columns = list(self.hash_columns) or list(frame.columns)
        if self.time_column:
            ns, no_time = times_ns(frame[self.time_column])
            held = no_time | (ns >= self.time_threshold_ns if self.time_threshold_ns is not None else False)
        else:
            held = _unit(row_hash(frame, columns, f"holdout-{self.seed}")) < self.holdout_fraction
        val = _unit(row_hash(frame, columns, f"validation-{self.seed}")) < self.validation_fraction
        return np.where(held, HOLDOUT, np.where(val, VALIDATION, TRAIN)).astype(np.int8)


def time_threshold(passes: Passes, column: str, holdout_fraction: float) -> int | None:
    """The time from which the latest ``holdout_fraction`` of rows are held out: the order statistic at
    ``int(rows * (1 - holdout_fraction))`` of the timed rows (rows without a time count, and are held out).
    None when that rank is past every timed row."""

    def count(df: pd.DataFrame) -> tuple[int, int, int, int]:
        ns, missing = times_ns(df[column])
        timed = ns[~missing]
        if not len(timed):
            return len(df), 0, np.iinfo(np.int64).max, np.iinfo(np.int64).min
        return len(df), len(timed), int(timed.min()), int(timed.max())

    counted = passes(count, lambda a, b: (a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])))
    if counted is None:
        return None
    rows, timed, lo, hi = counted
    rank = int(rows * (1 - holdout_fraction))
    if rank >= timed:
        return None

    def values(df: pd.DataFrame) -> np.ndarray:
        ns, missing = times_ns(df[column])
        return ns[~missing]

    return int(order_statistics(passes, values, [rank], lo, hi)[rank])
