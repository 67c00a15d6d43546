"""The metadata DB: rows behind a small interface, chosen by URL scheme.

SQLite is the embedded default (WAL, ``synchronous=FULL``: a committed transaction survives
a crash of the process or the machine); Postgres is for any cluster of more than one node. Both
are ``SqlMetadataDB`` (``sql.py``, on SQLAlchemy Core); callers never see which one they have.

SQL passed in uses ``?`` placeholders and the portable subset of SQL that SQLite and
Postgres share; the backend translates the ``?`` parameter markers and the few DDL spellings that differ.

Each component (registry, feature store, monitors, ...) owns its tables and their schema,
versioned independently: ``ensure_schema(component, migrations)`` applies, in one
transaction each, the migrations newer than the stored version, so a DB written by an
older aiinfra upgrades itself on first open.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiinfra.errors import Conflict, InvalidInput

__all__ = ["MetadataDB", "Migration", "Transaction", "open_metadata_db"]

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

    def ddl(self, statement: str) -> str:
        """A migration's statement as this backend spells it (``SqlMetadataDB`` says what differs)."""
        return statement

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
        # Once a component is at its target through this connection, asking again costs nothing: the stores'
        # read helpers ensure their schema on every call, and each check is otherwise a write transaction.
        ensured: dict[str, int] = self.__dict__.setdefault("_schema_ensured", {})
        if ensured.get(component) == target:
            return target
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
                    tx.execute(self.ddl(stmt))
                tx.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (component, m.version),
                )
        version = self.schema_version(component)
        if version == target:
            ensured[component] = version
        return version


def _backends() -> dict[str, Callable[..., MetadataDB]]:
    # Scheme -> constructor. Imported here, not at the top: the backend module builds on the classes above.
    from aiinfra.storage.sql import open_postgres, open_sqlite

    return {"sqlite": open_sqlite, "postgresql": open_postgres, "postgres": open_postgres}


def open_metadata_db(url: str, *, create: bool = True) -> MetadataDB:
    """The metadata DB at ``url``: ``sqlite:////abs/path.db`` or ``postgresql://USER:PASSWORD@HOST:PORT/DB``.

    Args:
        create: make a SQLite file that does not exist yet. Only what sets the platform up does
            (``connect()``, the CLI on this machine); a service that expects the platform's DB passes
            False, so on a node that does not have it, it refuses instead of starting on an empty one.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    backends = _backends()
    try:
        factory = backends[scheme]
    except KeyError:
        raise InvalidInput(f"unsupported metadata DB URL scheme {scheme!r}; this aiinfra supports sqlite:// and "
                           "postgresql://") from None
    return factory(url, create=create)
