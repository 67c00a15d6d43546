"""Dataset versions trusted only as written: each manifest's SHA-256 in the metadata DB, each file's in the manifest.

Whoever can write the lake (a bucket's writers are often more than the platform) but not the metadata DB
cannot change what trains, what is scored, or what the drift monitor compares traffic with.
"""

from __future__ import annotations

import io
import json
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aiinfra.data.catalog import MANIFEST, SAMPLE, DatasetCatalog, DatasetVersion
from aiinfra.data.profile import DatasetProfile
from aiinfra.errors import ArtifactCorrupted, NotFound
from aiinfra.storage import DigestLedger, open_artifact_store, open_metadata_db, sha256_bytes

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts.
pytestmark = pytest.mark.store


@pytest.fixture
def lake(config):
    db = open_metadata_db(config.metadata_url, create=True)
    store = open_artifact_store(config.storage_root)
    yield DatasetCatalog(store, ledger=DigestLedger(db)), DigestLedger(db), store
    db.close()


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    return buf.getvalue()


def _commit(catalog: DatasetCatalog, name: str, version: str, rows: pd.DataFrame) -> DatasetVersion:
    staging = f"staging/{uuid.uuid4().hex}"
    catalog.store.write_bytes(f"{staging}/part-0.parquet", _parquet(rows))
    catalog.store.write_bytes(f"{staging}/{SAMPLE}", _parquet(rows.head(2)))
    manifest = DatasetVersion(name=name, version=version, created_at=0.0, source_uri="file:///raw.csv",
                              source_format="csv", schema=[{"name": "a", "type": "int64"}], row_count=len(rows),
                              rows_in=len(rows), quarantined_count=0, files={},
                              profile=DatasetProfile(row_count=len(rows), sample_rows=2, columns={}))
    return catalog.commit(manifest, {"part-0.parquet": f"{staging}/part-0.parquet",
                                     SAMPLE: f"{staging}/{SAMPLE}"}, {})


ROWS = pd.DataFrame({"a": [1, 2, 3, 4]})


def test_a_committed_version_reads_back_and_its_manifest_hash_is_in_the_db(lake):
    catalog, ledger, _ = lake
    made = _commit(catalog, "churn", "abcd0001", ROWS)
    assert ledger.digest(f"{made.key}/{MANIFEST}") is not None
    assert catalog.get("churn").version == "abcd0001" and catalog.get("churn@abcd").ref == made.ref
    assert catalog.load(made).num_rows == 4
    assert pq.read_table(io.BytesIO(catalog.read_file(made, SAMPLE))).num_rows == 2


def test_a_manifest_changed_in_the_lake_is_refused(lake):
    catalog, _, store = lake
    made = _commit(catalog, "churn", "abcd0002", ROWS)
    # Someone with write access to the bucket points the version at other rows, with their right hashes:
    # every file matches the manifest, but the manifest is not the one the platform wrote.
    evil = _parquet(pd.DataFrame({"a": [9, 9, 9, 9]}))
    store.write_bytes(f"{made.key}/part-0.parquet", evil)
    body = json.loads(store.read_bytes(f"{made.key}/{MANIFEST}"))
    body["files"]["part-0.parquet"] = {"sha256": sha256_bytes(evil), "size": len(evil)}
    store.write_bytes(f"{made.key}/{MANIFEST}", json.dumps(body).encode())
    for read in (lambda: catalog.get("churn@abcd0002"), lambda: catalog.get("churn")):
        with pytest.raises(ArtifactCorrupted, match="dataset manifest .* changed since it was written"):
            read()
    assert catalog.versions("churn") == []  # a listing leaves it out (and warns)
    # Without the root, the same lake reads "fine": what the ledger is for.
    assert DatasetCatalog(store, ledger=None).get("churn@abcd0002").files["part-0.parquet"].size == len(evil)


def test_a_version_the_platform_did_not_write_is_refused(lake):
    catalog, _, store = lake
    _commit(DatasetCatalog(store, ledger=None), "planted", "abcd0003", ROWS)  # written around the platform
    with pytest.raises(ArtifactCorrupted, match="has no SHA-256 recorded in the metadata DB"):
        catalog.get("planted")
    with pytest.raises(NotFound):
        catalog.get("never")


def test_a_changed_file_is_refused_where_it_is_read(lake):
    catalog, _, store = lake
    made = _commit(catalog, "churn", "abcd0004", ROWS)
    store.write_bytes(f"{made.key}/{SAMPLE}", _parquet(pd.DataFrame({"a": [7, 7]})))  # the drift reference's sample
    with pytest.raises(ArtifactCorrupted, match="failed its integrity check"):
        catalog.read_file(made, SAMPLE)
    with pytest.raises(NotFound, match="no file"):
        catalog.read_file(made, "_other.parquet")
    store.write_bytes(f"{made.key}/part-0.parquet", b"not the rows")
    with pytest.raises(ArtifactCorrupted, match="failed its integrity check"):
        catalog.load(made)


def test_the_ledger_records_before_and_checks_after(lake):
    _, ledger, _ = lake
    assert ledger.digest("x/y") is None
    ledger.record("x/y", b"one")
    assert ledger.check("x/y", b"one", what="thing") == b"one"
    with pytest.raises(ArtifactCorrupted, match="thing x/y changed since it was written"):
        ledger.check("x/y", b"two", what="thing")
    ledger.record("x/y", b"two")  # written again (an ingest retried after a crash): the newer record counts
    ledger.check("x/y", b"two", what="thing")


def test_a_failed_write_leaves_no_record_and_racing_writers_agree(lake):
    catalog, ledger, store = lake

    def fail(data):
        raise OSError("bucket unavailable")

    with pytest.raises(OSError):
        ledger.record_and_write("k/manifest", b"body", fail)
    assert ledger.digest("k/manifest") is None

    # Two ingests of the same rows commit the same version at once, each with its own manifest (its own
    # time): whichever finishes last, the record and the manifest are that writer's.
    import threading

    barrier = threading.Barrier(4)
    errors = []

    def commit():
        try:
            barrier.wait()
            _commit(catalog, "race", "abcd0005", ROWS)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=commit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert catalog.get("race@abcd0005").row_count == 4  # readable: the record matches the manifest left


def test_a_lake_from_before_the_records_is_listed_extended_and_rewritten(lake):
    """Versions written before manifests were recorded: left out of listings (named in a warning), refused
    by ``get``, and a new commit beside them or of the same rows again works."""
    catalog, _, store = lake
    old = DatasetCatalog(store, ledger=None)
    _commit(old, "legacy", "abcd0006", ROWS)
    assert catalog.versions("legacy") == []
    newer = _commit(catalog, "legacy", "abcd0007", pd.DataFrame({"a": [5, 6]}))  # beside the old one
    assert [v.version for v in catalog.versions("legacy")] == ["abcd0007"] and catalog.get("legacy").ref == newer.ref
    with pytest.raises(ArtifactCorrupted, match="no SHA-256 recorded"):
        catalog.get("legacy@abcd0006")
    _commit(catalog, "legacy", "abcd0006", ROWS)  # the same rows ingested again: written afresh, recorded
    assert catalog.get("legacy@abcd0006").row_count == 4
    assert {v.version for v in catalog.versions("legacy")} == {"abcd0006", "abcd0007"}
