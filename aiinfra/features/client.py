"""The feature store client: what ``aiinfra.connect().features`` returns.

Materialization reads the source dataset from the lake here, in the caller, one Parquet
batch at a time (never the whole history in memory), reduces each batch to the latest
value per entity, and pushes it to the online store in one call per batch.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from aiinfra.config import PlatformConfig
from aiinfra.data.catalog import DatasetCatalog
from aiinfra.errors import ArtifactCorrupted, InvalidInput
from aiinfra.features.actor import FEATURE_STORE
from aiinfra.features.offline import point_in_time_join
from aiinfra.features.views import FeatureView
from aiinfra.service import ServiceBackend, actor_backend
from aiinfra.storage import ArtifactStore, DigestLedger, open_artifact_store, sha256_bytes

__all__ = ["FeatureStoreClient", "MaterializeReport"]


@dataclass
class MaterializeReport:
    view: str
    dataset_version: str
    start: float | None
    end: float
    rows_read: int
    rows_in_window: int
    entities_written: int
    batches: int


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).timestamp()


class FeatureStoreClient:
    def __init__(self, backend: ServiceBackend, store: ArtifactStore, *, catalog: DatasetCatalog) -> None:
        """``catalog``: where materialising reads a view's source (the platform's, which checks manifests)."""
        self._backend = backend
        self.store = store
        self.catalog = catalog

    @classmethod
    def on_cluster(cls, config: PlatformConfig, *, create: bool = False, store: ArtifactStore | None = None,
                   catalog: DatasetCatalog | None = None) -> FeatureStoreClient:
        """The client of the ``feature_store`` actor (started on first use when ``create``)."""
        store = store if store is not None else open_artifact_store(config.storage_root)
        return cls(actor_backend(FEATURE_STORE, config, create=create), store,
                   catalog=catalog or DatasetCatalog(store, ledger=DigestLedger.at(config.metadata_url)))

    def register_view(self, view: FeatureView | dict[str, Any]) -> FeatureView:
        view = view if isinstance(view, FeatureView) else FeatureView.model_validate(view)
        return self._backend.call("register_view", view)

    def get_view(self, name: str) -> FeatureView:
        return self._backend.call("get_view", name)

    def list_views(self) -> list[FeatureView]:
        return self._backend.call("list_views")

    def push(self, view: str, rows: list[dict[str, Any]]) -> int:
        """Streaming updates: upsert rows ``{entity, timestamp, feature...}`` (newest event time wins)."""
        return self._backend.call("push", view, rows)

    def get_online_features(self, view: str, entity_ids: list[Any]) -> list[dict[str, Any]]:
        return self._backend.call("get_online_features", view, list(entity_ids))

    def materialize(self, view: str, start: Any = None, end: Any = None, *, batch_rows: int = 50_000) -> MaterializeReport:
        """Load the latest values with event time in [start, end) into the online store.

        ``start`` defaults to where the last materialization stopped (incremental); ``end`` to now.
        """
        fv = self.get_view(view)
        start_s = _epoch(start) if start is not None else self._backend.call("materialized_until", view)
        end_s = _epoch(end) if end is not None else time.time()
        if start_s is not None and start_s >= end_s:
            raise InvalidInput(f"materialize {view!r}: start must be before end")
        dataset = self.catalog.get(fv.source)
        columns = [fv.entity, fv.timestamp, *fv.features]
        missing = [c for c in columns if c not in {c["name"] for c in dataset.schema_}]
        if missing:
            raise InvalidInput(f"view {view!r}: dataset {dataset.ref} has no column(s) {', '.join(missing)}")
        report = MaterializeReport(view, dataset.ref, start_s, end_s, 0, 0, 0, 0)
        parts = [rel for rel in sorted(dataset.files) if not rel.startswith("_")]
        for rel in parts:
            key = f"{dataset.key}/{rel}"
            data = self.store.read_bytes(key)  # one file at a time; each is one Ray Data block
            if sha256_bytes(data) != dataset.files[rel].sha256:
                raise ArtifactCorrupted(f"dataset file {self.store.uri_for(key)} failed its integrity check")
            for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=batch_rows, columns=columns):
                df = batch.to_pandas()
                report.rows_read += len(df)
                ts = pd.to_datetime(df[fv.timestamp], utc=True)
                epoch = ts.astype("int64") / 1e9
                keep = epoch < end_s if start_s is None else (epoch >= start_s) & (epoch < end_s)
                df = df[keep.to_numpy()]
                report.rows_in_window += len(df)
                if df.empty:
                    continue
                latest = df.loc[df.groupby(fv.entity)[fv.timestamp].idxmax()]
                rows = latest.assign(**{fv.timestamp: latest[fv.timestamp].astype(str)}).to_dict("records")
                report.entities_written += self._backend.call("push", view, rows)
                report.batches += 1
        # Recorded last: an interrupted run is simply redone from the previous mark (pushes are idempotent).
        self._backend.call("push", view, [], materialized_until=end_s)
        return report

    def training_set(self, entities: pd.DataFrame, views: list[str], **kwargs: Any) -> pd.DataFrame:
        """``entities`` joined point-in-time with each view's features (sources loaded from the lake)."""
        out = entities
        for name in views:
            fv = self.get_view(name)
            source = self.catalog.load(self.catalog.get(fv.source)).to_pandas()
            out = point_in_time_join(out, fv, source, **kwargs)
        return out
