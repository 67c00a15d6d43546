"""The metadata DB: rows behind a small interface, chosen by URL scheme.

SQLite is the embedded default (WAL, ``synchronous=FULL``: a committed transaction survives
a crash of the process or the machine). A Postgres backend implements the same interface and
registers itself under ``postgresql``; callers never see which one they have.

SQL passed in uses ``?`` placeholders and the portable subset of SQL that SQLite and
Postgres share; a backend translates placeholders if its driver needs another style.

Each component (registry, feature store, monitors, ...) owns its tables and their schema,
versioned independently: ``ensure_schema(component, migrations)`` applies, in one
transaction each, the migrations newer than the stored version, so a DB written by an
older aiinfra upgrades itself on first open.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiinfra.errors import Conflict, InvalidInput

__all__ = ["MetadataDB", "Migration", "SQLiteMetadataDB", "Transaction", "open_metadata_db"]

Row = dict[str, Any]


@dataclass(frozen=True)
class Migration:
    """Brings a component's schema from ``version - 1`` to ``version``."""

    version: int
    statements: tuple[str, ...]


class Transaction(ABC):
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the affected row count."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query inside the transaction (sees its own uncommitted writes)."""


class MetadataDB(ABC):
    url: str

    @abstractmethod
    def transaction(self) -> Any:  # a context manager yielding a Transaction
        """A write transaction, serialized against other writers; committed on exit."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read outside any write transaction."""

    @abstractmethod
    def schema_version(self, component: str) -> int:
        """The stored schema version of ``component`` (0 when it has none yet)."""

    @abstractmethod
    def integrity_check(self) -> str:
        """``"ok"`` when the database's own consistency check passes."""

    @abstractmethod
    def close(self) -> None: ...

    def ensure_schema(self, component: str, migrations: Sequence[Migration]) -> int:
        """Apply the migrations newer than the stored version, each in its own transaction.

        Raises:
            Conflict: the DB was written by a newer aiinfra (its version is past the newest
                migration known here); upgrading aiinfra is the fix, not downgrading data.
        """
        ordered = sorted(migrations, key=lambda m: m.version)
        if [m.version for m in ordered] != list(range(1, len(ordered) + 1)):
            raise ValueError(f"migrations of {component} must be numbered 1..n without gaps")
        target = ordered[-1].version if ordered else 0
        with self.transaction() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
        current = self.schema_version(component)
        if current > target:
            raise Conflict(
                f"metadata DB {self.url} holds {component} schema version {current}, newer than the "
                f"{target} this aiinfra knows; upgrade aiinfra to use it"
            )
        for m in ordered[current:]:
            with self.transaction() as tx:
                # Re-read inside the write lock: another process may have migrated meanwhile.
                rows = tx.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
                if rows and rows[0]["version"] >= m.version:
                    continue
                for stmt in m.statements:
                    tx.execute(stmt)
                tx.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (component, m.version),
                )
        return self.schema_version(component)


class _SQLiteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [dict(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]


class SQLiteMetadataDB(MetadataDB):
    """One connection per process, guarded by a lock; many processes may open the same file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so no implicit transactions.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=30000")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            # IMMEDIATE takes the write lock up front, so read-then-write sequences inside
            # (allocate the next version number, say) cannot interleave with another writer.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTransaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]

    def schema_version(self, component: str) -> int:
        rows = self.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(rows[0]["version"]) if rows else 0

    def integrity_check(self) -> str:
        return str(self.query("PRAGMA integrity_check")[0]["integrity_check"])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _open_sqlite(url: str) -> MetadataDB:
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path:
        raise InvalidInput(f"invalid SQLite URL {url!r}: expected sqlite:////absolute/path.db")
    # As in SQLAlchemy: sqlite:///rel.db is relative to the working directory, sqlite:////abs.db absolute.
    return SQLiteMetadataDB(Path(path).resolve())


# Scheme -> constructor. A new backend registers itself here; callers only ever pass a URL.
_BACKENDS: dict[str, Callable[[str], MetadataDB]] = {"sqlite": _open_sqlite}


def open_metadata_db(url: str) -> MetadataDB:
    scheme = url.split(":", 1)[0]
    try:
        factory = _BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise InvalidInput(f"unsupported metadata DB URL {url!r}; this aiinfra supports: {known}") from None
    return factory(url)
