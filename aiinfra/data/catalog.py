"""The dataset catalog: immutable, content-addressed versions that describe themselves.

A version lives in the lake under ``datasets/<name>/<version>/``: Parquet parts, the
profile's reference sample (``_sample.parquet``) and ``_manifest.json``, written last.
A version exists exactly when its manifest does, so a failed or interrupted ingest is never
visible.

What is trusted: the manifest holds the SHA-256 of every file of the version, and the manifest's own
SHA-256 is kept in the metadata DB (``DigestLedger``), recorded before the manifest is written. A
catalog opened with the ledger (``DatasetCatalog(store, ledger=...)``; what the platform's pipelines,
the monitor and batch inference use) refuses a manifest that does not match its record or has none, and
every file is checked against the manifest as it is read: whoever can write the bucket but not the
metadata DB cannot change what trains, is scored or is the drift reference. ``ledger=None`` reads without
that root (tests, and tools inspecting a lake they do not own).

The version index: each commit also writes ``datasets/<name>/_index/<created ns>-<version>``, a
small marker whose name sorts by creation time. Finding the latest version, or the one a prefix
names, lists only those markers and reads one manifest; it used to list every file of every
version (on S3, one paged listing of all the data) and read every manifest. A marker is written
just before its manifest, so a commit interrupted between the two leaves a marker without a
manifest, which readers skip: still nothing half-written is visible. A dataset written before the
index existed has no markers; it is read by the full listing, and its first new commit writes
the markers for the versions already there.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from aiinfra.data.profile import DatasetProfile, profile_diff
from aiinfra.errors import ArtifactCorrupted, Conflict, InvalidInput, NotFound
from aiinfra.redaction import redact_uri
from aiinfra.registry.types import validate_name
from aiinfra.storage import ArtifactStore, DigestLedger, FileDigest, sha256_bytes

__all__ = ["DatasetCatalog", "DatasetVersion", "parse_dataset_ref"]

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
SAMPLE = "_sample.parquet"
INDEX = "_index"
_VERSION_RE = re.compile(r"^[0-9a-f]{4,16}$")


class DatasetVersion(BaseModel):
    name: str
    version: str
    created_at: float
    created_by: str = "unknown"
    source_uri: str
    source_format: str
    parent_version: str | None = None
    spec_hash: str | None = None
    spec: dict[str, Any] | None = None
    schema_: list[dict[str, str]] = Field(alias="schema")
    row_count: int
    rows_in: int
    quarantined_count: int
    quarantine_reasons: dict[str, int] = Field(default_factory=dict)
    files: dict[str, FileDigest]
    quarantine_files: dict[str, FileDigest] = Field(default_factory=dict)
    profile: DatasetProfile
    # Where the rows came from beyond the source file, e.g. the model version that predicted them.
    lineage: dict[str, Any] = Field(default_factory=dict)
    # The columns the files are partitioned by (``col=value/part-....parquet``, aiinfra/data/partitions.py).
    partition_by: list[str] = Field(default_factory=list)

    model_config = {"populate_by_name": True}

    @field_validator("source_uri")
    @classmethod
    def _without_credentials(cls, uri: str) -> str:
        # A manifest is read by anyone who can list the lake: a password or a signed query never lands in one.
        return redact_uri(uri)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def key(self) -> str:
        return f"datasets/{self.name}/{self.version}"


def parse_dataset_ref(ref: str) -> tuple[str, str | None]:
    name, sep, version = ref.partition("@")
    validate_name("dataset name", name)
    if sep and not _VERSION_RE.match(version):
        raise InvalidInput(f"dataset reference {ref!r}: a version is 4 to 16 lowercase hex characters")
    return name, (version or None)


class DatasetCatalog:
    """The lake's dataset versions; with ``ledger``, each manifest checked against its SHA-256 in the metadata DB."""

    def __init__(self, store: ArtifactStore, *, ledger: DigestLedger | None) -> None:
        self.store = store
        self.ledger = ledger

    def names(self) -> list[str]:
        names = set()
        for rel in self.store.list_files("datasets"):
            parts = rel.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST:
                names.add(parts[0])
        return sorted(names)

    def versions(self, name: str) -> list[DatasetVersion]:
        """Oldest first; with the ledger, a version that fails its check is left out of the list, with a warning
        naming it (``get`` of that version says why)."""
        validate_name("dataset name", name)
        indexed = self._index(name)
        if not indexed:
            return self._scan(name)
        out = []
        for version in indexed:
            try:
                found = self._read_if_there(name, version)
            except ArtifactCorrupted as e:
                log.warning("dataset %s@%s left out: %s", name, version, e)
                continue
            if found is not None:
                out.append(found)
        return out

    def unverified(self) -> DatasetCatalog:
        """This lake without the ledger: for what only describes (a new version's parent, the index's markers)."""
        return DatasetCatalog(self.store, ledger=None)

    def latest(self, name: str) -> DatasetVersion | None:
        """The newest version, from the index (one manifest read), or None."""
        validate_name("dataset name", name)
        indexed = self._index(name)
        if not indexed:
            scanned = self._scan(name)
            return scanned[-1] if scanned else None
        for version in reversed(indexed):
            found = self._read_if_there(name, version)
            if found is not None:
                return found
        return None

    def get(self, ref: str) -> DatasetVersion:
        """``name`` (the latest version), ``name@<version>`` or a unique prefix of one."""
        name, version = parse_dataset_ref(ref)
        if version is not None and len(version) == 16:
            key = f"datasets/{name}/{version}/{MANIFEST}"
            if self.store.exists(key):
                return self._read(key)
        if version is None:
            latest = self.latest(name)
            if latest is None:
                raise NotFound(f"dataset {name!r} has no versions; ingest one with `aiinfra data ingest {name} URI`")
            return latest
        indexed = self._index(name)
        candidates = indexed or [v.version for v in self._scan(name)]
        if not candidates:
            raise NotFound(f"dataset {name!r} has no versions; ingest one with `aiinfra data ingest {name} URI`")
        matches = [v for v in candidates if v.startswith(version)]
        found = [m for m in (self._read_if_there(name, v) for v in matches) if m is not None]
        if not found:
            raise NotFound(f"dataset {name!r} has no version {version!r}")
        if len(found) > 1:
            raise Conflict(f"{ref!r} matches {len(found)} versions; give more characters")
        return found[0]

    def _index(self, name: str) -> list[str]:
        """The indexed version ids, oldest first (marker names sort by creation time)."""
        out: dict[str, None] = {}
        for rel in self.store.list_files(f"datasets/{name}/{INDEX}"):
            _, sep, version = rel.partition("-")
            if sep and "/" not in rel and _VERSION_RE.match(version):
                # A version committed again (the same rows ingested twice at once) has a marker per commit:
                # it is one version, placed by its latest.
                out.pop(version, None)
                out[version] = None
        return list(out)

    def _scan(self, name: str) -> list[DatasetVersion]:
        """Every manifest under the dataset: the whole listing (a dataset from before the index)."""
        out = []
        for rel in self.store.list_files(f"datasets/{name}"):
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == MANIFEST:
                out.append(self._read(f"datasets/{name}/{rel}"))
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def _read_if_there(self, name: str, version: str) -> DatasetVersion | None:
        try:
            return self._read(f"datasets/{name}/{version}/{MANIFEST}")
        except NotFound:  # a marker whose commit stopped before its manifest: not a version
            return None

    def _mark(self, name: str, version: str, created_at: float) -> None:
        body = json.dumps({"version": version, "created_at": created_at}).encode()
        self.store.write_bytes(f"datasets/{name}/{INDEX}/{int(created_at * 1e9):020d}-{version}", body)

    def exists(self, name: str, version: str) -> bool:
        return self.store.exists(f"datasets/{name}/{version}/{MANIFEST}")

    def commit(self, manifest: DatasetVersion, staged: dict[str, str], staged_quarantine: dict[str, str], *,
               digests: Mapping[str, FileDigest] | None = None) -> DatasetVersion:
        """Move staged files into the version's place, then write the manifest (which makes it visible).

        ``staged`` maps a final file name to its staging key. ``digests`` (by staging key) are the SHA-256s
        the writing tasks took: those files are moved without passing through this process (a rename, or a
        server-side copy) and recorded with that digest. A file without one is copied and hashed here.
        """
        digests = digests or {}

        def place(src: str, dst: str) -> FileDigest:
            if src in digests:
                self.store.move(src, dst)
                return digests[src]
            return self.store.copy(src, dst)

        moves = [(rel, src, f"{manifest.key}/{rel}") for rel, src in sorted(staged.items())]
        moves += [("quarantine:" + rel, src, f"quarantine/{manifest.name}/{manifest.version}/{rel}")
                  for rel, src in sorted(staged_quarantine.items())]
        # Many small requests to an object store: a few in flight at once (each is a server-side copy).
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(moves)))) as pool:
            placed = dict(zip([m[0] for m in moves], pool.map(lambda m: place(m[1], m[2]), moves)))
        files = {rel: placed[rel] for rel in sorted(staged)}
        quarantine = {rel: placed["quarantine:" + rel] for rel in sorted(staged_quarantine)}
        final = manifest.model_copy(update={"files": files, "quarantine_files": quarantine, "created_at": time.time()})
        if not self._index(manifest.name):  # the versions from before the index get their markers first
            for earlier in self.unverified()._scan(manifest.name):  # markers only: nothing is trusted by them
                self._mark(earlier.name, earlier.version, earlier.created_at)
        self._mark(final.name, final.version, final.created_at)
        body = final.model_dump_json(by_alias=True, indent=2).encode()
        key = f"{manifest.key}/{MANIFEST}"
        if self.ledger is not None:  # the record and the manifest under one DB write lock: never one writer's each
            self.ledger.record_and_write(key, body, lambda data: self.store.write_bytes(key, data))
        else:
            self.store.write_bytes(key, body)
        return final

    def read_file(self, version: DatasetVersion, rel: str) -> bytes:
        """One of the version's files (its reference sample, say), checked against the manifest's SHA-256.

        Raises:
            NotFound: the version has no such file. ArtifactCorrupted: it does not match.
        """
        expected = version.files.get(rel)
        if expected is None:
            raise NotFound(f"dataset {version.ref} has no file {rel!r}")
        key = f"{version.key}/{rel}"
        data = self.store.read_bytes(key)
        if sha256_bytes(data) != expected.sha256:
            raise ArtifactCorrupted(f"dataset file {self.store.uri_for(key)} failed its integrity check")
        return data

    def load(self, version: DatasetVersion) -> pa.Table:
        """All of a (small) version's rows, each file checked against its SHA-256 first.

        For data that does not fit in memory, read the files with Ray Data instead.
        """
        tables = []
        for rel, expected in sorted(version.files.items()):
            if rel.startswith("_"):
                continue
            data = self.store.read_bytes(f"{version.key}/{rel}")
            if sha256_bytes(data) != expected.sha256:
                raise ArtifactCorrupted(f"dataset file {self.store.uri_for(f'{version.key}/{rel}')} failed its integrity check")
            tables.append(pq.read_table(io.BytesIO(data)))
        return pa.concat_tables(tables) if tables else pa.table({})

    def diff(self, ref_a: str, ref_b: str) -> dict[str, Any]:
        a, b = self.get(ref_a), self.get(ref_b)
        schema_a = {c["name"]: c["type"] for c in a.schema_}
        schema_b = {c["name"]: c["type"] for c in b.schema_}
        return {
            "a": a.ref,
            "b": b.ref,
            "schema": {
                "added": sorted(set(schema_b) - set(schema_a)),
                "removed": sorted(set(schema_a) - set(schema_b)),
                "type_changed": {c: [schema_a[c], schema_b[c]] for c in sorted(set(schema_a) & set(schema_b))
                                 if schema_a[c] != schema_b[c]},
            },
            "profile": profile_diff(a.profile, b.profile),
        }

    def _read(self, key: str) -> DatasetVersion:
        data = self.store.read_bytes(key)
        if self.ledger is not None:
            try:
                self.ledger.check(key, data, what="dataset manifest", uri=self.store.uri_for(key))
            except ArtifactCorrupted:
                # The same version committed again at this moment (the same rows ingested twice): its record and
                # manifest are replaced under one DB lock, but a read can fall between the two. Once more.
                data = self.store.read_bytes(key)
                self.ledger.check(key, data, what="dataset manifest", uri=self.store.uri_for(key))
        return DatasetVersion.model_validate(json.loads(data))
