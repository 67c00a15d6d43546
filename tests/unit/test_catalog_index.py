"""The dataset catalog's version index, on a local directory and on a real S3-compatible server (moto).

Finding the latest version, or one by prefix, lists only the index's markers and reads one manifest; versions
written before the index are still found, and indexed by the next commit; a marker whose manifest was never
written (a commit stopped between the two) is no version.
"""

from __future__ import annotations

import uuid

import pytest

from aiinfra.data.catalog import INDEX, MANIFEST, DatasetCatalog, DatasetVersion
from aiinfra.data.profile import DatasetProfile
from aiinfra.errors import Conflict, NotFound
from aiinfra.storage import open_artifact_store, sha256_bytes


class Counting:
    """The store, with the listings and reads the catalog asks of it recorded."""

    def __init__(self, store):
        self._store, self.listed, self.read = store, [], []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def list_files(self, prefix):
        self.listed.append(prefix)
        return self._store.list_files(prefix)

    def read_bytes(self, key):
        self.read.append(key)
        return self._store.read_bytes(key)

    def reset(self):
        self.listed, self.read = [], []


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_artifact_store(str(tmp_path / "lake"))
    s3 = request.getfixturevalue("s3_server")
    return open_artifact_store(f"s3://lake/catalog-{uuid.uuid4().hex[:8]}{s3['query']}")


def _manifest(name: str, version: str) -> DatasetVersion:
    return DatasetVersion(name=name, version=version, created_at=0.0, source_uri="file:///raw.csv", source_format="csv",
                          schema=[{"name": "a", "type": "int64"}], row_count=1, rows_in=1, quarantined_count=0, files={},
                          profile=DatasetProfile(row_count=1, sample_rows=0, columns={}))


def _commit(catalog: DatasetCatalog, name: str, version: str) -> DatasetVersion:
    staged = f"staging/{uuid.uuid4().hex}/part-0.parquet"
    catalog.store.write_bytes(staged, b"rows of " + version.encode())
    return catalog.commit(_manifest(name, version), {"part-0.parquet": staged}, {})


VERSIONS = ["aaaa000000000001", "aaaa000000000002", "bbbb000000000003"]


def test_the_latest_version_and_a_prefix_read_one_manifest_and_list_only_the_index(store):
    counting = Counting(store)
    catalog = DatasetCatalog(counting, ledger=None)
    for v in VERSIONS:
        _commit(catalog, "events", v)
    _commit(catalog, "other", "cccc000000000004")  # another dataset's files are not listed either

    counting.reset()
    assert catalog.get("events").version == VERSIONS[-1]
    assert counting.listed == [f"datasets/events/{INDEX}"]
    assert counting.read == [f"datasets/events/{VERSIONS[-1]}/{MANIFEST}"]

    counting.reset()
    assert catalog.get("events@bbbb").version == VERSIONS[2]
    assert counting.listed == [f"datasets/events/{INDEX}"] and len(counting.read) == 1
    with pytest.raises(Conflict, match="matches 2 versions"):
        catalog.get("events@aaaa")
    with pytest.raises(NotFound, match="no version 'dddd'"):
        catalog.get("events@dddd")
    assert [v.version for v in catalog.versions("events")] == VERSIONS  # oldest first
    assert catalog.get("events@aaaa000000000001").parent_version is None


def test_versions_written_before_the_index_are_found_and_indexed_by_the_next_commit(store):
    catalog = DatasetCatalog(store, ledger=None)
    for v in VERSIONS[:2]:
        _commit(catalog, "legacy", v)
    store.delete_dir(f"datasets/legacy/{INDEX}")  # as an older aiinfra left them: manifests, no markers
    assert catalog.get("legacy").version == VERSIONS[1]
    assert [v.version for v in catalog.versions("legacy")] == VERSIONS[:2]
    assert catalog.get("legacy@aaaa000000000001").version == VERSIONS[0]

    _commit(catalog, "legacy", VERSIONS[2])
    assert len(store.list_files(f"datasets/legacy/{INDEX}")) == 3
    assert [v.version for v in catalog.versions("legacy")] == VERSIONS


def test_a_marker_without_its_manifest_is_no_version(store):
    catalog = DatasetCatalog(store, ledger=None)
    _commit(catalog, "events", VERSIONS[0])
    # A commit that wrote its marker and stopped before the manifest.
    catalog._mark("events", VERSIONS[1], 9e9)
    assert catalog.get("events").version == VERSIONS[0]
    assert [v.version for v in catalog.versions("events")] == [VERSIONS[0]]
    with pytest.raises(NotFound):
        catalog.get(f"events@{VERSIONS[1]}")
    with pytest.raises(NotFound, match="no versions"):
        catalog.get("nothing")
    assert catalog.latest("nothing") is None


def test_files_with_the_writers_digest_are_moved_not_read_and_the_rest_copied_and_hashed(store):
    counting = Counting(store)
    catalog = DatasetCatalog(counting, ledger=None)
    moved = store.write_bytes("staging/s/data/plan=basic/part-1.parquet", b"rows written by a task")
    store.write_bytes("staging/s/_sample.parquet", b"the sample")
    bad = store.write_bytes("staging/s/quarantine/part-2.parquet", b"bad rows")
    counting.reset()
    version = catalog.commit(
        _manifest("events", VERSIONS[0]),
        {"plan=basic/part-1.parquet": "staging/s/data/plan=basic/part-1.parquet", "_sample.parquet": "staging/s/_sample.parquet"},
        {"part-2.parquet": "staging/s/quarantine/part-2.parquet"},
        digests={"staging/s/data/plan=basic/part-1.parquet": moved, "staging/s/quarantine/part-2.parquet": bad})
    assert version.files["plan=basic/part-1.parquet"] == moved and version.quarantine_files["part-2.parquet"] == bad
    assert version.files["_sample.parquet"].sha256 == sha256_bytes(b"the sample")  # no digest given: hashed here
    assert not store.exists("staging/s/data/plan=basic/part-1.parquet")  # moved ...
    assert store.exists("staging/s/_sample.parquet")  # ... or copied
    assert store.digest(f"{version.key}/plan=basic/part-1.parquet") == moved
    assert store.read_bytes(f"quarantine/events/{VERSIONS[0]}/part-2.parquet") == b"bad rows"
