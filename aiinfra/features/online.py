"""The online store: the latest feature values per entity, for serving.

A plain class over the metadata DB (the durable copy) and a dict per view (the fast copy):
a write is acknowledged once its transaction commits, and a restarted store reloads the
dict from the DB. Writes are idempotent and order-independent: a value replaces the stored
one only if its event time is not older, so a retried or late push cannot move time back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from aiinfra.errors import InvalidInput, NotFound
from aiinfra.features.views import FeatureView
from aiinfra.storage import MetadataDB, Migration

__all__ = ["MIGRATIONS", "OnlineStore"]

COMPONENT = "feature_store"
MIGRATIONS = (
    Migration(
        1,
        (
            """CREATE TABLE feature_views (
                name TEXT PRIMARY KEY,
                definition TEXT NOT NULL,
                materialized_until DOUBLE PRECISION,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE online_features (
                view TEXT NOT NULL REFERENCES feature_views(name),
                entity TEXT NOT NULL,
                event_ts DOUBLE PRECISION NOT NULL,
                feature_values TEXT NOT NULL,
                PRIMARY KEY (view, entity)
            )""",
        ),
    ),
)


def _key(entity: Any) -> str:
    if isinstance(entity, float) and entity.is_integer():
        entity = int(entity)
    return str(entity)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


class OnlineStore:
    def __init__(self, db: MetadataDB, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.ensure_schema(COMPONENT, MIGRATIONS)
        self._views: dict[str, FeatureView] = {}
        self._values: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        for row in db.query("SELECT name, definition FROM feature_views"):
            self._views[row["name"]] = FeatureView.model_validate_json(row["definition"])
            self._values[row["name"]] = {}
        for row in db.query("SELECT view, entity, event_ts, feature_values FROM online_features"):
            self._values[row["view"]][row["entity"]] = (row["event_ts"], json.loads(row["feature_values"]))

    # -- views ---------------------------------------------------------------------------
    def register_view(self, view: FeatureView | dict[str, Any]) -> FeatureView:
        view = view if isinstance(view, FeatureView) else FeatureView.model_validate(view)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO feature_views (name, definition, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at",
                (view.name, view.model_dump_json(by_alias=True), self._clock()),
            )
        self._views[view.name] = view
        self._values.setdefault(view.name, {})
        return view

    def get_view(self, name: str) -> FeatureView:
        try:
            return self._views[name]
        except KeyError:
            raise NotFound(f"feature view {name!r} is not registered") from None

    def list_views(self) -> list[FeatureView]:
        return [self._views[k] for k in sorted(self._views)]

    def materialized_until(self, name: str) -> float | None:
        self.get_view(name)
        rows = self.db.query("SELECT materialized_until FROM feature_views WHERE name = ?", (name,))
        return rows[0]["materialized_until"]

    # -- writes --------------------------------------------------------------------------
    def push(self, view_name: str, rows: Sequence[dict[str, Any]], *, materialized_until: float | None = None) -> int:
        """Upsert rows ``{entity, timestamp, feature...}``; returns how many changed a stored value.

        Raises:
            InvalidInput: a row lacks the entity, the timestamp or a feature; nothing is written.
        """
        view = self.get_view(view_name)
        prepared: dict[str, tuple[float, dict[str, Any]]] = {}
        for i, row in enumerate(rows):
            missing = [c for c in (view.entity, view.timestamp, *view.features) if c not in row]
            if missing:
                raise InvalidInput(f"push to {view_name!r}: row {i} lacks {', '.join(missing)}")
            ts = _to_epoch(row[view.timestamp], view_name, i)
            key = _key(row[view.entity])
            values = {f: _clean(row[f]) for f in view.features}
            if key not in prepared or prepared[key][0] <= ts:
                prepared[key] = (ts, values)
        current = self._values[view_name]
        changed = {k: v for k, v in prepared.items() if k not in current or current[k][0] <= v[0]}
        with self.db.transaction() as tx:
            for key, (ts, values) in changed.items():
                tx.execute(
                    "INSERT INTO online_features (view, entity, event_ts, feature_values) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (view, entity) DO UPDATE SET event_ts = excluded.event_ts, "
                    "feature_values = excluded.feature_values WHERE excluded.event_ts >= online_features.event_ts",
                    (view_name, key, ts, json.dumps(values)),
                )
            if materialized_until is not None:
                tx.execute(
                    "UPDATE feature_views SET materialized_until = ? WHERE name = ? "
                    "AND (materialized_until IS NULL OR materialized_until < ?)",
                    (materialized_until, view_name, materialized_until),
                )
        current.update(changed)  # only after the commit: what is in memory is durable
        return len(changed)

    # -- reads ---------------------------------------------------------------------------
    def get_online_features(self, view_name: str, entity_ids: Sequence[Any]) -> list[dict[str, Any]]:
        """Every feature for many entities in one call; unknown or expired ones come back as nulls, flagged."""
        view = self.get_view(view_name)
        now = self._clock()
        values = self._values[view_name]
        nulls = dict.fromkeys(view.features)
        out = []
        for entity in entity_ids:
            hit = values.get(_key(entity))
            if hit is None:
                out.append({"entity": entity, "status": "missing", "event_ts": None, "features": nulls})
            elif view.ttl_s is not None and now - hit[0] > view.ttl_s:
                out.append({"entity": entity, "status": "expired", "event_ts": hit[0], "features": nulls})
            else:
                out.append({"entity": entity, "status": "ok", "event_ts": hit[0], "features": hit[1]})
        return out

    def entity_count(self, view_name: str) -> int:
        self.get_view(view_name)
        return len(self._values[view_name])


def _to_epoch(value: Any, view: str, i: int) -> float:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise InvalidInput(f"push to {view!r}: row {i} has an invalid timestamp {value!r}") from None
    if ts is pd.NaT:
        raise InvalidInput(f"push to {view!r}: row {i} has no timestamp")
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.timestamp()
