"""The ingestion gate, wired to Ray Data: read -> validate -> quarantine -> profile -> version.

One streaming pass: each batch is validated, its good and bad rows are written to a staging
area of the lake by the task that saw them, and the task returns only small statistics (counts,
reasons, a content digest, a partial profile). The driver merges those, never the rows. Only
when every check passes are the staged files moved into ``datasets/<name>/<version>/`` and the
manifest written, which is the moment the version becomes visible.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from aiinfra.config import PlatformConfig
from aiinfra.data.catalog import SAMPLE, DatasetCatalog, DatasetVersion
from aiinfra.data.partitions import split_by
from aiinfra.data.profile import PartialProfile, finalize, profile_batch
from aiinfra.data.sources import Source, resolve_source
from aiinfra.data.spec import ValidationSpec
from aiinfra.data.validation import REASON_COLUMN, SOURCE_COLUMN, validate_batch
from aiinfra.data.versioning import ContentDigest, content_digest, row_hashes, schema_fingerprint, version_id
from aiinfra.errors import AiInfraError, ArtifactCorrupted, InvalidInput
from aiinfra.redaction import redact_text, redact_uri
from aiinfra.registry.types import validate_name
from aiinfra.storage import ArtifactStore, DigestLedger, FileDigest, open_artifact_store

__all__ = ["IngestResult", "ingest", "ingest_staged", "process_batch", "refused_batch"]

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
_ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception|Invalid)\w*: ")

# Ray (Data) is imported inside the functions: the CLI (`aiinfra data ingest`) and the demo import this
# module before connect() sets RAY_AUTH_MODE, and Ray reads that once, when it is imported.


@dataclass
class BatchStats:
    rows_in: int = 0
    kept: int = 0
    quarantined: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    digest: ContentDigest = field(default_factory=ContentDigest)
    profile: PartialProfile = field(default_factory=PartialProfile)
    schema: pa.Schema | None = None
    files: list[str] = field(default_factory=list)
    quarantine_files: list[str] = field(default_factory=list)
    first_source: str | None = None
    # Each staged file's SHA-256 and size, taken by the task that wrote it (keyed by its place under staging:
    # data/<name> or quarantine/<name>): the commit moves the files and records these, not a second hash.
    digests: dict[str, FileDigest] = field(default_factory=dict)
    # A problem with a batch as a whole travels back as data: Ray Data keeps only the text
    # of an exception raised in a task, and the caller deserves the typed error.
    error: AiInfraError | None = None

    def merge(self, o: BatchStats) -> BatchStats:
        if self.schema is not None and o.schema is not None and schema_fingerprint(self.schema) != schema_fingerprint(o.schema):
            raise InvalidInput(
                f"the input's schema differs between files ({self.first_source}: {schema_fingerprint(self.schema)}; "
                f"{o.first_source}: {schema_fingerprint(o.schema)}); declare the column types in a spec"
            )
        return BatchStats(
            self.rows_in + o.rows_in, self.kept + o.kept, self.quarantined + o.quarantined,
            self.reasons + o.reasons, self.digest.merge(o.digest), self.profile.merge(o.profile),
            self.schema or o.schema, self.files + o.files, self.quarantine_files + o.quarantine_files,
            self.first_source or o.first_source, digests={**self.digests, **o.digests}, error=self.error or o.error,
        )


@dataclass
class IngestResult:
    version: DatasetVersion
    created: bool


@functools.lru_cache(maxsize=4)
def _store(uri: str) -> ArtifactStore:
    return open_artifact_store(uri)


def _write_parquet(store: ArtifactStore, key: str, table: pa.Table) -> FileDigest:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return store.write_bytes(key, buf.getvalue())


def process_batch(batch: pa.Table, *, storage_root: str, staging: str, spec: ValidationSpec | None,
                  duplicate_keys: set[tuple[Any, ...]] | None = None, partition_by: Sequence[str] = ()) -> pa.Table:
    """One batch through the gate. Runs in a Ray Data task; returns one row of pickled BatchStats.

    ``partition_by``: the kept rows are written one file per value of these columns, under ``col=value/``.
    """
    try:
        stats = _process(batch, storage_root, staging, spec, duplicate_keys, partition_by)
    except AiInfraError as e:
        return refused_batch(batch.num_rows, e)
    return _stats_table(stats)


def refused_batch(rows: int, error: AiInfraError) -> pa.Table:
    """``process_batch``'s answer for a batch refused as a whole: ingestion (or scoring) stops with ``error``."""
    return _stats_table(BatchStats(rows_in=rows, error=error))


def _stats_table(stats: BatchStats) -> pa.Table:
    return pa.table({"stats": pa.array([pickle.dumps(stats)], pa.binary())})


def _process(batch: pa.Table, storage_root: str, staging: str, spec: ValidationSpec | None,
             duplicate_keys: set[tuple[Any, ...]] | None, partition_by: Sequence[str] = ()) -> BatchStats:
    source = batch.column(SOURCE_COLUMN)[0].as_py() if SOURCE_COLUMN in batch.column_names and batch.num_rows else None
    if spec is not None:
        result = validate_batch(batch, spec)
        good, bad, reasons = result.good, result.bad, result.reasons
    else:
        good = batch.drop_columns([SOURCE_COLUMN]) if SOURCE_COLUMN in batch.column_names else batch
        bad, reasons = None, Counter()
    if duplicate_keys and spec is not None and spec.key and good.num_rows:
        keys = list(zip(*(good.column(k).to_pylist() for k in spec.key)))
        dup = pa.array([k in duplicate_keys for k in keys], pa.bool_())
        if pc.any(dup).as_py():
            message = f"{', '.join(spec.key)}: duplicate key"
            dup_rows = good.filter(dup)
            reasons[message] += dup_rows.num_rows
            dup_rows = dup_rows.append_column(REASON_COLUMN, pa.array([message] * dup_rows.num_rows, pa.string()))
            good = good.filter(pc.invert(dup))
            parts = [_as_text(t) for t in (bad, dup_rows) if t is not None and t.num_rows]
            bad = pa.concat_tables(parts, promote_options="default")
    if bad is not None and bad.num_rows:
        bad = _as_text(bad)
    store = _store(storage_root)
    stats = BatchStats(rows_in=batch.num_rows, kept=good.num_rows, quarantined=0 if bad is None else bad.num_rows,
                       reasons=reasons, schema=good.schema, first_source=source)
    if good.num_rows:
        h1, h2 = row_hashes(good)
        stats.digest = content_digest(h1, h2)
        stats.profile = profile_batch(good, h1)
        for directory, rows in split_by(good, partition_by):
            name = f"part-{uuid.uuid4().hex[:16]}.parquet"
            name = f"{directory}/{name}" if directory else name
            stats.digests[f"data/{name}"] = _write_parquet(store, f"{staging}/data/{name}", rows)
            stats.files.append(name)
    if bad is not None and bad.num_rows:
        name = f"part-{uuid.uuid4().hex[:16]}.parquet"
        stats.digests[f"quarantine/{name}"] = _write_parquet(store, f"{staging}/quarantine/{name}", bad)
        stats.quarantine_files.append(name)
    return stats


def _as_text(table: pa.Table) -> pa.Table:
    """Quarantine keeps values as text: rows that failed to parse have no other common type."""
    return pa.table({c: pc.cast(table.column(c), pa.string()) for c in table.column_names})


def _read(source: Source, spec: ValidationSpec | None):
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    import ray.data

    if source.format == "csv":
        # Declared columns are read as text and parsed by the validator, so one bad value
        # quarantines one row instead of failing the whole file.
        convert = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in spec.columns} if spec else None, strings_can_be_null=True
        )
        return ray.data.read_csv(source.paths, filesystem=source.filesystem, include_paths=True, convert_options=convert)
    if source.format == "parquet":
        return ray.data.read_parquet(source.paths, filesystem=source.filesystem, include_paths=True)
    return ray.data.read_json(source.paths, filesystem=source.filesystem, include_paths=True)


def _explain(e: BaseException, uri: str) -> AiInfraError:
    """Turn what Ray Data raised into our error, naming the input."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, AiInfraError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    # Ray keeps the task's traceback as text: its last "SomeError: message" line is the reason.
    lines = [ln.strip() for ln in str(e).splitlines()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln) and not ln.startswith(("ray.", "UserCodeException"))]
    detail = errors[-1] if errors else next((ln for ln in lines if ln), type(e).__name__)
    return InvalidInput(f"cannot ingest {redact_uri(uri)}: {redact_text(detail, [uri])}")


def _run_pass(source: Source, spec: ValidationSpec | None, config: PlatformConfig, staging: str,
              duplicate_keys: set[tuple[Any, ...]] | None, progress) -> BatchStats:
    def gated():
        # Inside the try of merge_stats: some readers (Parquet) open their files while the plan is built.
        return _read(source, spec).map_batches(
            process_batch, batch_format="pyarrow", batch_size=BATCH_ROWS,
            fn_kwargs={"storage_root": config.storage_root, "staging": staging, "spec": spec, "duplicate_keys": duplicate_keys},
        )
    return merge_stats(gated, source.uri, progress)


def merge_stats(gated, uri: str, progress) -> BatchStats:
    """Run ``gated()`` (a Dataset of ``process_batch``'s one-row stats tables) and merge what its batches saw;
    the first batch's error, or Ray Data's, is raised as ours, naming ``uri``."""
    total = BatchStats()
    try:
        for batch in gated().iter_batches(batch_format="pyarrow", batch_size=None):
            for blob in batch.column("stats").to_pylist():
                total = total.merge(pickle.loads(blob))
                if total.error is not None:
                    raise total.error
                progress(total)
    except AiInfraError:
        raise
    except Exception as e:  # noqa: BLE001 - Ray Data wraps user errors in its own types
        raise _explain(e, uri) from None
    return total


# Keys per hash partition of the duplicate-key count. Ray Data's default is 200 partitions whatever the size:
# on 2 CPUs that was 16 s for 6,000 rows, most of a small ingest.
KEYS_PER_PARTITION = 1_000_000


def _duplicate_keys(store: ArtifactStore, staging: str, files: list[str], key: list[str], rows: int) -> set[tuple[Any, ...]]:
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    import ray.data

    if not files:
        return set()
    if rows <= KEYS_PER_PARTITION:
        return _duplicate_keys_here(store, staging, files, key)
    counts = ray.data.read_parquet([store.path(f"{staging}/data/{f}") for f in files], filesystem=store.fs, columns=key)
    partitions = max(1, min(200, -(-rows // KEYS_PER_PARTITION)))
    dups = (counts.groupby(key if len(key) > 1 else key[0], num_partitions=partitions).count()
            .rename_columns({"count()": "_n"}).filter(expr="_n > 1"))
    return {tuple(r[k] for k in key) for r in dups.take_all()}


def _duplicate_keys_here(store: ArtifactStore, staging: str, files: list[str], key: list[str]) -> set[tuple[Any, ...]]:
    """The same count in this process, for at most ``KEYS_PER_PARTITION`` keys (tens of MB): a Ray Data shuffle
    has a fixed cost of about 7 s on 2 CPUs, most of a small ingest's time."""
    tables = [pq.read_table(io.BytesIO(store.read_bytes(f"{staging}/data/{f}")), columns=key) for f in files]
    counts = pa.concat_tables(tables, promote_options="default").group_by(key).aggregate([([], "count_all")])
    dups = counts.filter(pc.greater(counts.column("count_all"), 1))
    return set(zip(*(dups.column(k).to_pylist() for k in key)))


def ingest(config: PlatformConfig, name: str, uri: str, *, spec: ValidationSpec | None = None,
           who: str = "unknown", progress=None, lineage: dict[str, Any] | None = None) -> IngestResult:
    """Validate, quarantine, profile and version ``uri`` as dataset ``name``.

    Raises:
        InvalidInput: bad name, unreadable or empty input, a missing column, or a check that
            failed as a whole (too many bad rows, row-count bounds); the message names the
            file or the columns and reasons with their counts. No version is created.
    """
    validate_name("dataset name", name)
    source = resolve_source(uri)
    store = open_artifact_store(config.storage_root)
    progress = progress or (lambda stats: None)
    staging = f"staging/ingest-{uuid.uuid4().hex}"
    try:
        stats = _run_pass(source, spec, config, staging, None, progress)
        if spec is not None and spec.key and stats.kept:
            dups = _duplicate_keys(store, staging, stats.files, spec.key, stats.kept)
            if dups:
                store.delete_dir(staging)
                staging = f"staging/ingest-{uuid.uuid4().hex}"
                stats = _run_pass(source, spec, config, staging, dups, progress)
        return _commit(config, store, name, stats, staging, spec=spec, uri=uri, source_uri=source.uri.split("?", 1)[0],
                       source_format=source.format, who=who, lineage=lineage)
    finally:
        store.delete_dir(staging)


def ingest_staged(config: PlatformConfig, name: str, gated, staging: str, *, source_uri: str, source_format: str,
                  who: str = "unknown", progress=None, lineage: dict[str, Any] | None = None,
                  partition_by: Sequence[str] = ()) -> IngestResult:
    """Version rows that aiinfra computed on Ray Data (batch predictions) without writing them twice.

    ``gated()`` is a Dataset whose batches already went through ``process_batch`` (no spec: the rows are the
    platform's own) into ``staging``: the rows are written once, by the tasks that made them, and committed as
    an ingested file would be. ``staging`` is deleted afterwards, whatever happens. ``partition_by``: the
    columns ``process_batch`` partitioned the files by (recorded in the manifest, and part of the version id).
    """
    validate_name("dataset name", name)
    store = open_artifact_store(config.storage_root)
    try:
        stats = merge_stats(gated, source_uri, progress or (lambda stats: None))
        return _commit(config, store, name, stats, staging, spec=None, uri=source_uri, source_uri=source_uri,
                       source_format=source_format, who=who, lineage=lineage, partition_by=partition_by)
    finally:
        store.delete_dir(staging)


def _commit(config: PlatformConfig, store: ArtifactStore, name: str, stats: BatchStats, staging: str, *,
            spec: ValidationSpec | None, uri: str, source_uri: str, source_format: str, who: str,
            lineage: dict[str, Any] | None, partition_by: Sequence[str] = ()) -> IngestResult:
    """The checks over the whole input, then the version: its files moved from ``staging``, its manifest written
    (and the manifest's SHA-256 recorded in the metadata DB first, so readers can trust it)."""
    # create: ingestion may be the first thing a new platform does (as `connect()`, it sets the DB up).
    with closing(DigestLedger.at(config.metadata_url, create=True)) as ledger:
        catalog = DatasetCatalog(store, ledger=ledger)
        _check(stats, spec, redact_uri(uri))
        assert stats.rows_in == stats.kept + stats.quarantined  # the accounting invariant
        vid = version_id(stats.schema, stats.digest, layout=",".join(partition_by))
        if catalog.exists(name, vid):
            try:
                return IngestResult(catalog.get(f"{name}@{vid}"), created=False)
            except ArtifactCorrupted as e:  # unrecorded (older) or changed since: written again below, from these rows
                log.warning("dataset %s@%s is written again: %s", name, vid, e)
        parent = catalog.unverified().latest(name)  # lineage only (its name): an older, unrecorded one is fine
        profile = finalize(stats.profile, stats.schema)
        digests = {f"{staging}/{rel}": d for rel, d in stats.digests.items()}
        if stats.profile.sample is not None:
            digests[f"{staging}/{SAMPLE}"] = _write_parquet(store, f"{staging}/{SAMPLE}", stats.profile.sample)
        manifest = DatasetVersion(
            name=name, version=vid, created_at=0.0, created_by=who, source_uri=redact_uri(source_uri),
            source_format=source_format, parent_version=parent.version if parent else None,
            spec_hash=spec.spec_hash if spec else None, spec=spec.model_dump(mode="json") if spec else None,
            schema=[{"name": f.name, "type": str(f.type)} for f in stats.schema],
            row_count=stats.kept, rows_in=stats.rows_in, quarantined_count=stats.quarantined,
            quarantine_reasons=dict(stats.reasons.most_common()), files={}, profile=profile,
            lineage=lineage or {}, partition_by=list(partition_by),
        )
        staged = {f: f"{staging}/data/{f}" for f in stats.files}
        if stats.profile.sample is not None:
            staged[SAMPLE] = f"{staging}/{SAMPLE}"
        version = catalog.commit(manifest, staged, {f: f"{staging}/quarantine/{f}" for f in stats.quarantine_files},
                                 digests=digests)
        return IngestResult(version, created=True)


def _check(stats: BatchStats, spec: ValidationSpec | None, uri: str) -> None:
    if stats.rows_in == 0:
        raise InvalidInput(f"{uri}: the input has no rows")
    report = "; ".join(f"{reason} ({count} rows)" for reason, count in stats.reasons.most_common(20))
    max_bad = spec.max_bad_fraction if spec else 0.0
    bad_fraction = stats.quarantined / stats.rows_in
    if bad_fraction > max_bad:
        raise InvalidInput(
            f"{uri}: {stats.quarantined} of {stats.rows_in} rows ({bad_fraction:.2%}) failed validation, more than the "
            f"tolerated {max_bad:.2%}: {report}"
        )
    if spec is not None:
        if stats.kept < spec.min_rows:
            raise InvalidInput(f"{uri}: {stats.kept} valid rows, fewer than min_rows {spec.min_rows}")
        if spec.max_rows is not None and stats.kept > spec.max_rows:
            raise InvalidInput(f"{uri}: {stats.kept} valid rows, more than max_rows {spec.max_rows}")
