"""The training table on Ray Data: read, point-in-time join, split and statistics without gathering the rows.

``train.prepare_data`` builds the table in one process for small versions (``data.engine: memory``) and
here for large ones (``ray``; ``auto`` picks by the version's size). Both give the same rows on the same
sides of the split (``aiinfra.data.splits``) and the same fitted transforms (``aiinfra.data.fitting``);
tests/integration/test_training_table.py holds them to it on the demo data.

- **Read**: each of the version's files is read, and checked against its SHA-256, by a task of its own
  (``read_version``), never through the driver.
- **Point-in-time join**: both sides are partitioned by a hash of the entity's text; each input batch
  becomes one row per partition (the partition, the side, the rows as Arrow IPC bytes), so the two sides
  share one schema and can be unioned; ``groupby(partition).map_groups`` then brings one partition's label
  rows and source rows together, and the as-of join is ``features.offline.point_in_time_join`` (pandas
  ``merge_asof``) on that partition alone. A partition's rows are what one task holds: their number is
  chosen from the data's size (``_partitions``).
- **Split**: the time threshold is an exact order statistic found by histogram passes; each row's side is
  then a function of the row (``SplitRule.assign``), applied batch by batch.
- **Statistics**: ``dataset_passes`` maps a statistic over the blocks in tasks and merges the partial
  results in a tree of tasks (``_FAN_IN`` at a time); the driver merges the last few.

The joined table is materialized once into Ray's object store (which spills to disk when memory runs
short), because the split and the fit read it several times; nothing of it passes through the driver.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aiinfra.data.catalog import DatasetVersion
from aiinfra.data.fitting import Passes
from aiinfra.errors import ArtifactCorrupted, InvalidInput
from aiinfra.features.offline import point_in_time_join
from aiinfra.features.views import FeatureView
from aiinfra.storage import open_artifact_store, sha256_bytes

__all__ = ["TASK_CPUS", "dataset_passes", "join_point_in_time", "prepare_on_ray", "read_version", "to_frame"]

T = TypeVar("T")

# What each read, join and statistics task reserves: a share, so that they run beside Serve's replicas and
# the platform's actors on a small cluster (a default task asks for a whole CPU).
TASK_CPUS = 0.25
_FAN_IN = 32  # partial statistics merged per task
_PARTITION_BYTES = 64 * 2**20  # about this much of the stored (compressed) input per join partition
_MAX_PARTITIONS = 512


# -- read ---------------------------------------------------------------------------------------
def _read_files(batch: dict[str, np.ndarray], storage_root: str, columns: list[str] | None) -> pa.Table:
    store = open_artifact_store(storage_root)
    tables = []
    for key, digest in zip(batch["key"], batch["sha256"]):
        data = store.read_bytes(str(key))
        if sha256_bytes(data) != digest:
            raise ArtifactCorrupted(f"dataset file {store.uri_for(str(key))} failed its integrity check")
        tables.append(pq.read_table(io.BytesIO(data), columns=columns))
    return pa.concat_tables(tables)


def read_version(storage_root: str, version: DatasetVersion, *, columns: list[str] | None = None) -> Any:
    """The version's rows as a lazy Dataset: one read task per file, each file checked against its SHA-256."""
    import ray.data

    files = [{"key": f"{version.key}/{rel}", "sha256": d.sha256}
             for rel, d in sorted(version.files.items()) if not rel.startswith("_")]
    if not files:
        raise InvalidInput(f"{version.ref} has no data files")
    return ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
        _read_files, fn_kwargs={"storage_root": storage_root, "columns": columns}, batch_size=1,
        batch_format="numpy", num_cpus=TASK_CPUS)


def stored_bytes(version: DatasetVersion) -> int:
    return sum(d.size for rel, d in version.files.items() if not rel.startswith("_"))


# -- passes over a dataset ----------------------------------------------------------------------
def _partial(batch: pa.Table, compute: Callable[[pd.DataFrame], Any]) -> dict[str, np.ndarray]:
    # pyarrow's own conversion, as the catalog's in one process: Ray's pandas batches map Arrow types to
    # pandas' Arrow-backed dtypes (Ray 2.56 on), whose nulls and integer columns read differently.
    return {"part": np.array([pickle.dumps(compute(batch.to_pandas()))], dtype=object)}


def _combine(batch: dict[str, np.ndarray], merge: Callable[[Any, Any], Any]) -> dict[str, np.ndarray]:
    merged = functools.reduce(merge, (pickle.loads(p) for p in batch["part"]))
    return {"part": np.array([pickle.dumps(merged)], dtype=object)}


def dataset_passes(ds: Any) -> Passes:
    """``Passes`` over a Dataset's blocks: the statistic per block in tasks, merged in a tree of tasks."""

    def run(compute: Callable[[pd.DataFrame], T], merge: Callable[[T, T], T]) -> T | None:
        partials = ds.map_batches(_partial, fn_kwargs={"compute": compute}, batch_size=None, batch_format="pyarrow",
                                  num_cpus=TASK_CPUS)
        merged = partials.map_batches(_combine, fn_kwargs={"merge": merge}, batch_size=_FAN_IN, batch_format="numpy",
                                      num_cpus=TASK_CPUS)
        out: T | None = None
        for row in merged.iter_rows():
            part = pickle.loads(row["part"])
            out = part if out is None else merge(out, part)
        return out

    return run


def to_frame(ds: Any) -> pd.DataFrame:
    """A (small) Dataset's rows in this process, converted by pyarrow as the catalog's are (see ``_partial``)."""
    tables = [t for t in ds.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    if not tables:
        return ds.schema().empty_table().to_pandas() if ds.schema() is not None else pd.DataFrame()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


# -- the point-in-time join ---------------------------------------------------------------------
def _partitions(stored: int) -> int:
    return int(min(_MAX_PARTITIONS, max(4, math.ceil(stored / _PARTITION_BYTES))))


def _partition_of(entity: pa.ChunkedArray | pa.Array, partitions: int) -> np.ndarray:
    """A partition per row from the entity's text (``5`` and ``"5"`` meet, as the join compares them)."""
    text = pc.cast(entity, pa.string()).to_numpy(zero_copy_only=False)
    text = np.where(pd.isna(text), "", text).astype(object)
    return (pd.util.hash_array(text) % np.uint64(partitions)).astype(np.int64)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _pack(batch: pa.Table, entity: str, side: int, partitions: int, every_partition: bool) -> pa.Table:
    """One row per partition of the batch: (partition, side, the partition's rows as Arrow IPC bytes).

    The label side writes every partition, empty ones too, so each group knows the label rows' schema."""
    parts = _partition_of(batch[entity], partitions)
    out_part, out_rows = [], []
    for p in (range(partitions) if every_partition else np.unique(parts)):
        out_part.append(int(p))
        out_rows.append(_ipc(batch.filter(pa.array(parts == p))))
    return pa.table({"__part": pa.array(out_part, pa.int64()), "__side": pa.array([side] * len(out_part), pa.int8()),
                     "__rows": pa.array(out_rows, pa.large_binary())})


def _unpack(payloads: list[bytes]) -> pa.Table:
    return pa.concat_tables([pa.ipc.open_stream(p).read_all() for p in payloads])


def _join_partition(group: pa.Table, view: FeatureView, keep: list[str], timestamp: str, label_time: str,
                    delay_s: float, out_schema: pa.Schema, source_schema: pa.Schema) -> pa.Table:
    side = group["__side"].to_numpy()
    rows = group["__rows"].to_pylist()
    labels = _unpack([r for r, s in zip(rows, side) if s == 1]).to_pandas()[keep].rename(columns={timestamp: label_time})
    labels[label_time] = labels[label_time] + pd.Timedelta(seconds=delay_s)
    source_rows = [r for r, s in zip(rows, side) if s == 0]
    # A partition with no source rows joins against none: every feature null, as in one process.
    source = (_unpack(source_rows) if source_rows else source_schema.empty_table()).to_pandas()
    joined = point_in_time_join(labels, view, source, timestamp_column=label_time)
    return pa.Table.from_pandas(joined[out_schema.names], schema=out_schema, preserve_index=False)


def join_point_in_time(labels: Any, source: Any, view: FeatureView, *, keep: list[str], label_time: str,
                       delay_s: float, label_schema: pa.Schema, source_schema: pa.Schema, stored: int) -> Any:
    """The labelled rows (``keep`` of them) with the view's features as of ``timestamp + delay_s`` (renamed
    ``label_time``): ``point_in_time_join`` run per entity partition. A lazy Dataset; rows in no fixed order."""
    partitions = _partitions(stored)
    fields = [label_schema.field(c) for c in keep]
    # Adding the delay (a pandas Timedelta, nanoseconds) makes label time nanoseconds, as in one process.
    fields = [pa.field(label_time, pa.timestamp("ns", tz=getattr(f.type, "tz", None))) if f.name == view.timestamp else f
              for f in fields]
    out_schema = pa.schema(fields + [source_schema.field(f) for f in view.features])
    packed_labels = labels.map_batches(_pack, fn_kwargs={"entity": view.entity, "side": 1, "partitions": partitions,
                                                         "every_partition": True},
                                       batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS)
    packed_source = source.map_batches(_pack, fn_kwargs={"entity": view.entity, "side": 0, "partitions": partitions,
                                                         "every_partition": False},
                                       batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS)
    return packed_labels.union(packed_source).groupby("__part", num_partitions=partitions).map_groups(
        _join_partition, fn_kwargs={"view": view, "keep": keep, "timestamp": view.timestamp, "label_time": label_time,
                                    "delay_s": delay_s, "out_schema": out_schema,
                                    "source_schema": source_schema},
        batch_format="pyarrow", num_cpus=TASK_CPUS)


# -- the whole table ----------------------------------------------------------------------------
def arrow_schema(store: Any, version: DatasetVersion) -> pa.Schema:
    """The version's Arrow schema, from its first file's footer (no rows read)."""
    rel = next((r for r in sorted(version.files) if not r.startswith("_")), None)
    if rel is None:
        raise InvalidInput(f"{version.ref} has no data files")
    return pq.read_schema(store.path(f"{version.key}/{rel}"), filesystem=store.fs)


def _require(columns: list[str], needed: list[str], what: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InvalidInput(f"{what} has no column(s) {', '.join(missing)}; it has {', '.join(columns)}")


def _labelled(batch: pa.Table, label: str) -> pa.Table:
    return batch.filter(pc.is_valid(batch[label]))  # as pandas' dropna: null and NaN labels both go


def _on_side(batch: pa.Table, rule: Any, side: int) -> pa.Table:
    # The side from the row's values (pandas, as in one process); the rows kept as Arrow, so every block keeps
    # the stored types (pandas would make an integer column with a null a float one, block by block).
    return batch.filter(pa.array(rule.assign(batch.to_pandas()) == side))


def _table(platform: Any, cfg: Any, version: DatasetVersion, pinned: dict[str, str]) -> tuple[Any, list[str], Any]:
    """(the labelled rows as a lazy Dataset, its columns, the feature view or None)."""
    from aiinfra.pipelines.train import LABEL_TIME

    d = cfg.data
    store, root = platform.store, platform.config.storage_root
    schema = arrow_schema(store, version)
    if not d.feature_view:
        return read_version(root, version), schema.names, None
    spec = d.feature_view
    fv = platform.features.register_view(spec) if isinstance(spec, FeatureView) else platform.features.get_view(spec)
    _require(schema.names, [fv.entity, fv.timestamp, d.label], f"dataset {version.ref}")
    source_version = version if fv.source == version.name else platform.datasets.get(pinned.get("feature_source") or fv.source)
    if source_version is not version:
        pinned["feature_source"] = source_version.ref
    source_schema = arrow_schema(store, source_version)
    _require(source_schema.names, [fv.entity, fv.timestamp, *fv.features], f"source of view {fv.name!r} ({source_version.ref})")
    keep = list(dict.fromkeys([fv.entity, fv.timestamp, d.label, *[c for c in d.slices if c not in fv.features]]))
    _require(schema.names, keep, f"dataset {version.ref}")
    joined = join_point_in_time(
        read_version(root, version, columns=keep), read_version(root, source_version, columns=[fv.entity, fv.timestamp, *fv.features]),
        fv, keep=keep, label_time=LABEL_TIME, delay_s=d.label_delay_s, label_schema=schema, source_schema=source_schema,
        stored=stored_bytes(version) + stored_bytes(source_version))
    return joined, [LABEL_TIME if c == fv.timestamp else c for c in keep] + list(fv.features), fv


def prepare_on_ray(platform: Any, cfg: Any, version: DatasetVersion, *,
                   holdout_as_dataset: bool = False) -> tuple[Any, Any, Any, list[str]]:
    """``prepare_data`` on Ray Data (the module's note): the training and validation rows stay Datasets.

    The holdout comes to the driver as a DataFrame for evaluation, as in one process (``holdout_fraction``
    of the table, or the holdout dataset: evaluation is not distributed yet), unless ``holdout_as_dataset``."""
    from aiinfra.data.fitting import Moments, fit_in_passes
    from aiinfra.data.splits import HOLDOUT, TRAIN, VALIDATION
    from aiinfra.data.suggest import profile_frame
    from aiinfra.pipelines.train import LABEL_TIME, _auto_features, resolve_config, split_rule
    from aiinfra.training.ray_train import PreparedData
    from aiinfra.training.tabular import _python_scalar, class_labels_for

    d = cfg.data
    pinned: dict[str, str] = {"dataset": version.ref}
    table, columns, view = _table(platform, cfg, version, pinned)
    holdout_ds = None
    if d.split.holdout_dataset:
        hv = platform.datasets.get(d.split.holdout_dataset)
        pinned["holdout"] = hv.ref
        holdout_ds, holdout_columns, _ = _table(platform, cfg, hv, pinned)
    needed = [d.label, *([] if d.features == "auto" else [f.column for f in d.features.features]), *d.slices]
    _require(columns, needed, f"the training table from {version.ref}")
    time_column = d.split.time_column or (LABEL_TIME if d.feature_view else None)
    if holdout_ds is not None:
        _require(holdout_columns, needed, f"the holdout table from {pinned['holdout']}")
    elif time_column:
        _require(columns, [time_column], f"the training table from {version.ref}")
    # Read (and joined) once: the split and the fit read the table several times.
    table = table.map_batches(_labelled, fn_kwargs={"label": d.label}, batch_format="pyarrow", batch_size=None,
                              num_cpus=TASK_CPUS).materialize()
    rule = split_rule(cfg, version, columns, view, dataset_passes(table),
                      time_column=None if holdout_ds is not None else time_column, separate_holdout=holdout_ds is not None)

    def side(s: int) -> Any:
        return table.map_batches(_on_side, fn_kwargs={"rule": rule, "side": s}, batch_format="pyarrow", batch_size=None,
                                 num_cpus=TASK_CPUS)

    # The training rows are read by every fitting pass and by the trainer: split out once, not re-hashed each time.
    train, val = side(TRAIN).materialize(), side(VALIDATION)

    def label_stats(df: pd.DataFrame) -> tuple[np.ndarray, set[Any], Moments]:
        s = rule.assign(df)
        y = df[d.label][s == TRAIN]
        values = set() if cfg.task == "regression" else {_python_scalar(v) for v in y.dropna().unique()}
        finite = y.to_numpy(dtype=np.float64) if cfg.task == "regression" else np.zeros(0)
        return np.bincount(s, minlength=3), values, Moments.of(finite)

    stats = dataset_passes(table)(label_stats, lambda a, b: (a[0] + b[0], a[1] | b[1], a[2].merge(b[2])))
    counts, values, moments = stats if stats is not None else (np.zeros(3, np.int64), set(), Moments())
    holdout = holdout_ds if holdout_ds is not None else side(HOLDOUT)
    held = int(counts[HOLDOUT]) if holdout_ds is None else holdout.count()
    if counts[TRAIN] < 10 or held < 1:
        raise InvalidInput(f"{version.ref} gives {int(counts[TRAIN])} training and {held} holdout rows: too few to train on")
    if not holdout_as_dataset:
        holdout = to_frame(holdout)
    labels = class_labels_for(cfg.task, pd.Series(sorted(values, key=lambda v: (str(type(v)), v)), dtype=object))
    mean, std = (moments.mean, moments.std or 1.0) if cfg.task == "regression" else (0.0, 1.0)
    features, left_out = d.features, {}
    if features == "auto":  # profiled from a bounded share of the training rows (all of them, up to PROFILE_ROWS)
        features, left_out = _auto_features(platform, cfg, profile_frame(to_frame(train.limit(PROFILE_ROWS))),
                                            version, time_column)
    pre = fit_in_passes(features, dataset_passes(train))
    data = PreparedData(train=train, val=val, pre=pre, label=d.label, task=cfg.task, class_labels=labels,
                        target_mean=mean, target_std=std, left_out=left_out,
                        train_rows=int(counts[TRAIN]), val_rows=int(counts[VALIDATION]))
    return data, holdout, resolve_config(cfg, version, features, pinned), list(pinned.values())


PROFILE_ROWS = 200_000  # features: auto on Ray Data profiles at most this many training rows
