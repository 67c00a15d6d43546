"""SHA-256s kept in the metadata DB for files whose hashes cannot live beside them.

Everything in the artifact store is checked against a hash before it is trusted, but a hash in the same
bucket proves nothing to whoever can write that bucket (often more principals than the platform). The
ledger is the root those hashes hang from: a dataset version's manifest (which holds the SHA-256 of each
of its files), a training checkpoint's files. The writer records the hash before the file becomes
visible; a reader refuses a file whose bytes do not match, or that has no record at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiinfra.errors import ArtifactCorrupted
from aiinfra.storage.hashing import sha256_bytes
from aiinfra.storage.metadata import MetadataDB, Migration, open_metadata_db

__all__ = ["DigestLedger"]

COMPONENT = "digest_ledger"
MIGRATIONS = (
    Migration(1, ("""CREATE TABLE digest_ledger (
        artifact_key TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL
    )""",)),
)


class DigestLedger:
    """The recorded SHA-256 of artifact keys, in the metadata DB.

    ``DigestLedger(db)`` uses a DB the caller owns; ``DigestLedger.at(url)`` opens its own on first use
    (a client that may never read a dataset opens no connection) and ``close`` closes it.
    """

    def __init__(self, db: MetadataDB | Callable[[], MetadataDB]) -> None:
        self._open = db if callable(db) and not isinstance(db, MetadataDB) else (lambda: db)
        self._owns = not isinstance(db, MetadataDB)
        self._db: MetadataDB | None = None
        self._lock = threading.Lock()

    @classmethod
    def at(cls, metadata_url: str, *, create: bool = False) -> DigestLedger:
        """``create``: as ``open_metadata_db``'s (only what may set the platform up, as ingestion, passes True)."""
        return cls(lambda: open_metadata_db(metadata_url, create=create))

    @property
    def db(self) -> MetadataDB:
        with self._lock:
            if self._db is None:
                db = self._open()
                db.ensure_schema(COMPONENT, MIGRATIONS)
                self._db = db
            return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._owns:
                self._db.close()
            self._db = None

    def record(self, key: str, data: bytes) -> str:
        """Record ``data``'s SHA-256 as ``key``'s (replacing an earlier record); returns it.

        Call it before the bytes become visible at ``key``: a record without its file is a write that did not
        finish, which no reader trusts into anything; a file without its record is refused.
        """
        return self.record_digests({key: sha256_bytes(data)})[key]

    def record_digests(self, digests: Mapping[str, str]) -> dict[str, str]:
        with self.db.transaction() as tx:
            self._upsert(tx, digests)
        return dict(digests)

    def record_and_write(self, key: str, data: bytes, write: Callable[[bytes], object]) -> str:
        """Record ``data``'s SHA-256 for ``key`` and ``write`` it, both inside one write transaction.

        The transaction holds the metadata DB's write lock (SQLite's BEGIN IMMEDIATE, Postgres's advisory
        lock) from its start, so two writers of the same key (two ingests of the same rows) take turns: the
        record and the file that stay are the same writer's. A ``write`` that fails leaves no record.
        """
        digest = sha256_bytes(data)
        with self.db.transaction() as tx:
            self._upsert(tx, {key: digest})
            write(data)
        return digest

    @staticmethod
    def _upsert(tx: Any, digests: Mapping[str, str]) -> None:
        now = time.time()
        for key, digest in sorted(digests.items()):
            tx.execute("INSERT INTO digest_ledger (artifact_key, sha256, recorded_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (artifact_key) DO UPDATE SET sha256 = excluded.sha256, "
                       "recorded_at = excluded.recorded_at", (key, digest, now))

    def digest(self, key: str) -> str | None:
        rows = self.db.query("SELECT sha256 FROM digest_ledger WHERE artifact_key = ?", (key,))
        return str(rows[0]["sha256"]) if rows else None

    def check(self, key: str, data: bytes, *, what: str, uri: str | None = None) -> bytes:
        """``data`` if its SHA-256 is the one recorded for ``key``.

        Raises:
            ArtifactCorrupted: nothing is recorded for ``key``, or the bytes differ; the message names ``what``.
        """
        self.check_digest(key, sha256_bytes(data), what=what, uri=uri)
        return data

    def check_digest(self, key: str, digest: str, *, what: str, uri: str | None = None) -> None:
        recorded = self.digest(key)
        where = uri or key
        if recorded is None:
            raise ArtifactCorrupted(
                f"{what} {where} has no SHA-256 recorded in the metadata DB: it was not written by this platform "
                "(or before it recorded them); refusing to trust it. Write it again through aiinfra")
        if recorded != digest:
            raise ArtifactCorrupted(
                f"{what} {where} changed since it was written: its sha256 is {digest}, the metadata DB recorded "
                f"{recorded}; refusing to trust it")
