"""Point-in-time correct training sets.

For each (entity, timestamp) row of the entity frame, the latest feature values whose event
time is at most that timestamp and, with a TTL, no older than ``timestamp - ttl``: never a
value from the future, never a stale one.
"""

from __future__ import annotations

import pandas as pd

from aiinfra.errors import InvalidInput
from aiinfra.features.views import FeatureView

__all__ = ["point_in_time_join"]


def point_in_time_join(
    entities: pd.DataFrame, view: FeatureView, source: pd.DataFrame, *, entity_column: str | None = None,
    timestamp_column: str | None = None,
) -> pd.DataFrame:
    """``entities`` plus the view's features as of each row's timestamp; rows keep their order.

    Args:
        entities: one row per (entity, timestamp) to build features for; may carry labels.
        source: the view's source rows (entity, event timestamp, features).
        entity_column, timestamp_column: the entity frame's columns, when named differently
            from the view's.
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

    left = entities.copy()
    left["__row"] = range(len(left))
    # One resolution on both sides: merge_asof refuses to compare ns with us timestamps.
    left["__ts"] = pd.to_datetime(left[ts_col], utc=True).astype("datetime64[ns, UTC]")
    right = source[[view.entity, view.timestamp, *view.features]].copy()
    right["__ts"] = pd.to_datetime(right[view.timestamp], utc=True).astype("datetime64[ns, UTC]")
    right = right.rename(columns={view.entity: "__entity"}).drop(columns=[view.timestamp])
    left["__entity"] = left[ent_col]
    if left["__entity"].dtype != right["__entity"].dtype:
        left["__entity"] = left["__entity"].astype(str)
        right["__entity"] = right["__entity"].astype(str)
    # merge_asof wants both sides sorted on the time key; "backward" with exact matches allowed
    # means event time <= row time, and the tolerance is the TTL.
    joined = pd.merge_asof(
        left.sort_values("__ts", kind="stable"),
        right.sort_values("__ts", kind="stable"),
        on="__ts",
        by="__entity",
        direction="backward",
        allow_exact_matches=True,
        tolerance=pd.Timedelta(seconds=view.ttl_s) if view.ttl_s else None,
    )
    return joined.sort_values("__row").drop(columns=["__row", "__ts", "__entity"]).reset_index(drop=True)
