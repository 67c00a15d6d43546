"""Point-in-time correct training sets.

For each (entity, timestamp) row of the entity frame, the latest feature values whose event
time is at most that timestamp and, with a TTL, no older than ``timestamp - ttl``: never a
value from the future, never a stale one.

What the join does with awkward input, on purpose (tests/unit/test_feature_store.py holds it):

- Times are compared in UTC at nanosecond resolution: microsecond Parquet columns, nanosecond
  pandas ones, time-zone-aware values in any zone, and naive values (taken to be UTC) may be mixed.
  A value that is not a time is refused with the column named.
- A row whose entity key or timestamp is null gets null features: it is never matched, and in
  particular never to source rows whose key is also null. Source rows without a key or time are
  ignored.
- A row with no source row at or before its time (within the TTL) gets null features too.
  ``status_column`` names a column that says which case each row is: ``found``, ``null_key``
  or ``none_before``.
- Keys compare by value across numeric types: an integer key column matches a float one (pandas
  turns an integer column with a null into floats), as long as the floats are whole numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aiinfra.errors import InvalidInput
from aiinfra.features.views import FeatureView

__all__ = ["FOUND", "NONE_BEFORE", "NULL_KEY", "point_in_time_join"]

FOUND, NULL_KEY, NONE_BEFORE = "found", "null_key", "none_before"


def _utc_ns(values: pd.Series, what: str) -> pd.Series:
    try:
        return pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]")
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(f"{what} must hold timestamps: {e}") from None


def _whole(values: pd.Series) -> bool:
    present = values.dropna().to_numpy(dtype=np.float64)
    return bool(np.all(np.isfinite(present)) and np.all(present == np.round(present)))


def _comparable_keys(left: pd.Series, right: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The two key columns in one dtype, nulls kept as nulls."""
    numeric = all(pd.api.types.is_numeric_dtype(k) and not pd.api.types.is_bool_dtype(k) for k in (left, right))
    if numeric:
        if _whole(left) and _whole(right):
            return left.astype("Int64"), right.astype("Int64")
        return left.astype("float64"), right.astype("float64")
    if left.dtype == right.dtype:
        return left, right
    return left.astype("string"), right.astype("string")


def point_in_time_join(
    entities: pd.DataFrame, view: FeatureView, source: pd.DataFrame, *, entity_column: str | None = None,
    timestamp_column: str | None = None, status_column: str | None = None,
) -> pd.DataFrame:
    """``entities`` plus the view's features as of each row's timestamp; rows keep their order.

    Args:
        entities: one row per (entity, timestamp) to build features for; may carry labels.
        source: the view's source rows (entity, event timestamp, features).
        entity_column, timestamp_column: the entity frame's columns, when named differently
            from the view's.
        status_column: if given, add this column: ``found``, ``null_key`` (the row's entity or
            time is null) or ``none_before`` (no source row at or before its time, within the TTL).
    """
    ent_col = entity_column or view.entity
    ts_col = timestamp_column or view.timestamp
    for frame, cols, what in ((entities, [ent_col, ts_col], "entity frame"),
                              (source, [view.entity, view.timestamp, *view.features], f"source of view {view.name!r}")):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise InvalidInput(f"{what} lacks column(s) {', '.join(missing)}")
    clash = [f for f in view.features if f in entities.columns]
    if clash:
        raise InvalidInput(f"entity frame already has column(s) {', '.join(clash)} of view {view.name!r}")
    if status_column is not None and (status_column in entities.columns or status_column in view.features):
        raise InvalidInput(f"status column {status_column!r} is already a column of the entity frame or the view")

    left = entities.copy()
    left["__row"] = range(len(left))
    # One resolution on both sides: merge_asof refuses to compare ns with us timestamps.
    left["__ts"] = _utc_ns(left[ts_col], f"entity frame column {ts_col!r}")
    right = source[[view.entity, view.timestamp, *view.features]].copy()
    right["__ts"] = _utc_ns(right[view.timestamp], f"column {view.timestamp!r} of view {view.name!r}'s source")
    left["__entity"], right["__entity"] = _comparable_keys(left[ent_col], right[view.entity])
    right = right.drop(columns=[view.entity, view.timestamp])
    right = right[right["__entity"].notna() & right["__ts"].notna()]
    right["__hit"] = True
    usable = (left["__entity"].notna() & left["__ts"].notna()).to_numpy()
    # merge_asof wants both sides sorted on the time key; "backward" with exact matches allowed
    # means event time <= row time, and the tolerance is the TTL.
    joined = pd.merge_asof(
        left[usable].sort_values("__ts", kind="stable"),
        right.sort_values("__ts", kind="stable"),
        on="__ts",
        by="__entity",
        direction="backward",
        allow_exact_matches=True,
        tolerance=pd.Timedelta(seconds=view.ttl_s) if view.ttl_s else None,
    )
    if not usable.all():  # rows that cannot be joined keep their place, with null features
        joined = pd.concat([joined, left[~usable]], ignore_index=True)
    joined = joined.sort_values("__row")
    if status_column is not None:
        hit = joined["__hit"].notna().to_numpy() if "__hit" in joined else np.zeros(len(joined), bool)
        keyed = joined["__entity"].notna().to_numpy() & joined["__ts"].notna().to_numpy()
        joined[status_column] = np.where(~keyed, NULL_KEY, np.where(hit, FOUND, NONE_BEFORE))
    return joined.drop(columns=["__row", "__ts", "__entity", "__hit"], errors="ignore").reset_index(drop=True)
