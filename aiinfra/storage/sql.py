"""The metadata DB on SQLAlchemy Core: SQLite (the embedded default) and Postgres (any cluster of more than one node).

One implementation for both, so every component's SQL runs the same way on each. What differs is kept here:

- **Write transactions are serialized**, as callers expect (allocating the next version number is a read
  then a write). SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock up front. Postgres: the
  first statement of every write transaction takes one transaction-scoped advisory lock, so writers queue
  exactly as on SQLite and ``MAX(version) + 1`` stays gap-free and unique under concurrent writers, on any
  number of nodes. Reads take no lock.
- **Durability**: SQLite runs in WAL mode with ``synchronous=FULL`` (a committed transaction survives a
  crash of the process or the machine); Postgres commits are durable by default (``fsync``,
  ``synchronous_commit``), which this code never turns off.
- **Placeholders**: callers write ``?``; the Postgres driver (psycopg 3) gets ``%s``.
- **DDL**: migrations use the portable subset (``DOUBLE PRECISION`` for timestamps, ``BIGINT`` for 64-bit
  values, ``INSERT ... ON CONFLICT``); the one spelling the two disagree on, an auto-numbered primary key,
  is written ``INTEGER PRIMARY KEY AUTOINCREMENT`` and becomes an identity column on Postgres.

A database error the caller cannot fix (the server is down or restarting, the file is locked past the
timeout) is a ``ServiceUnavailable`` naming the database (password hidden) and what to check; a broken
constraint is a ``Conflict``.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from aiinfra.errors import Conflict, InvalidInput, ServiceUnavailable
from aiinfra.redaction import redact_text, redact_uri
from aiinfra.storage.metadata import MetadataDB, Row, Transaction

__all__ = ["SqlMetadataDB", "open_postgres", "open_sqlite"]

# Any fixed 64-bit number: the key of the advisory lock every write transaction on Postgres holds.
_WRITE_LOCK_KEY = 0x61_69_69_6E_66_72_61  # "aiinfra"
_AUTOINCREMENT = re.compile(r"INTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT", re.IGNORECASE)


def _driver_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled); our SQL has no ``?`` in string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Tx(Transaction):
    def __init__(self, conn: Connection, translate: Any) -> None:
        self._conn, self._translate = conn, translate

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.exec_driver_sql(self._translate(sql), tuple(params)).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [dict(r) for r in self._conn.exec_driver_sql(self._translate(sql), tuple(params)).mappings()]


class SqlMetadataDB(MetadataDB):
    """The metadata DB at ``url`` (``sqlite:////abs/path.db`` or ``postgresql://user:pass@host:port/db``)."""

    def __init__(self, url: str, engine: Engine, *, dialect: str) -> None:
        self.url = redact_uri(url)  # what messages and callers see; the engine alone holds the password
        self.dialect = dialect
        self._engine = engine
        self._translate = _driver_sql if dialect == "postgresql" else (lambda sql: sql)

    # -- the MetadataDB interface ----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._errors(), self._engine.connect() as conn:
            conn = conn.execution_options(aiinfra_write=True)  # SQLite: BEGIN IMMEDIATE (see _sqlite_engine)
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,))
                yield _Tx(conn, self._translate)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._errors(), self._engine.connect() as conn:
            if self.dialect == "postgresql":
                # One statement is its own transaction either way: autocommit spares the BEGIN and the
                # ROLLBACK on return to the pool, two of a read's four round trips (BENCHMARKS.md). The
                # pool puts the server's default isolation level back before the connection's next use.
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            return [dict(r) for r in conn.exec_driver_sql(self._translate(sql), tuple(params)).mappings()]

    def schema_version(self, component: str) -> int:
        rows = self.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(rows[0]["version"]) if rows else 0

    def integrity_check(self) -> str:
        if self.dialect == "sqlite":
            return str(self.query("PRAGMA integrity_check")[0]["integrity_check"])
        self.query("SELECT 1")  # Postgres checks its pages itself; a server that answers is consistent
        return "ok"

    def ddl(self, statement: str) -> str:
        if self.dialect == "postgresql":
            return _AUTOINCREMENT.sub("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", statement)
        return statement

    def close(self) -> None:
        self._engine.dispose()

    # -- errors ------------------------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as e:
            raise Conflict(f"the metadata DB refused a write that breaks a constraint: {e.orig}") from None
        except (OperationalError, InterfaceError) as e:
            raise ServiceUnavailable(self._unavailable(e)) from e
        except DBAPIError as e:
            if e.connection_invalidated:
                raise ServiceUnavailable(self._unavailable(e)) from e
            raise

    def _unavailable(self, e: DBAPIError) -> str:
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else type(e).__name__
        reason = redact_text(reason, [self._engine.url.password] if self._engine.url.password else [])
        if self.dialect == "postgresql":
            return (f"the metadata DB {self.url} is not available ({reason}); retry shortly, and check "
                    "that the server runs and accepts connections from this node")
        return f"the metadata DB {self.url} is busy or unreadable ({reason}); retry shortly"


def _sqlite_engine(path: Path) -> Engine:
    # A small pool of connections, each set up once (the pragmas below): threads of one process (a Serve
    # replica's, the monitor's) read at once under WAL; writers queue on SQLite's lock (busy_timeout).
    engine = create_engine(f"sqlite:///{path}", pool_size=4, max_overflow=8,
                           connect_args={"timeout": 30.0, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # no implicit transactions from the driver: _on_begin issues BEGIN
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write takes the write lock up front, so its reads and writes cannot interleave with another
        # writer's; a read begins deferred and never blocks a writer (WAL).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("aiinfra_write") else "BEGIN")

    return engine


def open_sqlite(url: str, *, create: bool = True) -> SqlMetadataDB:
    """Raises:
        InvalidInput: not a SQLite URL.
        ServiceUnavailable: ``create`` is False and there is no database file there.
    """
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path:
        raise InvalidInput(f"invalid SQLite URL {url!r}: expected sqlite:////absolute/path.db")
    # As in SQLAlchemy: sqlite:///rel.db is relative to the working directory, sqlite:////abs.db absolute.
    resolved = Path(path).resolve()
    if not create and not resolved.exists():
        raise ServiceUnavailable(
            f"no metadata DB at {resolved} on this node: the platform keeps its state elsewhere. A cluster of "
            "several machines needs shared state: configure `metadata: {type: postgresql, url: ...}` "
            "(AIINFRA_METADATA_URL=postgresql://...) and `storage_root: s3://...`; on one machine, start the "
            "platform first (aiinfra up, or aiinfra.connect())"
        )
    # The platform's state (token hashes, the registry) is its owner's only: the directory (AIINFRA_HOME by
    # default) made 700, the file made 600 before SQLite opens it (its journal and WAL files copy that mode).
    resolved.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not resolved.exists():
        os.close(os.open(resolved, os.O_WRONLY | os.O_CREAT, 0o600))
    db = SqlMetadataDB(f"sqlite:///{resolved}", _sqlite_engine(resolved), dialect="sqlite")
    db.query("SELECT 1")  # opens (and so makes) the file now, not at the first real call
    return db


def open_postgres(url: str, *, create: bool = True) -> SqlMetadataDB:
    """A pool of connections to the Postgres at ``url``; a server that cannot be reached fails here, clearly.

    The database itself is the operator's (``create`` concerns SQLite files only); the tables are made by
    each component's migrations.

    Raises:
        InvalidInput: the URL is not a Postgres URL.
        ServiceUnavailable: the server does not answer (the message names it, password hidden).
    """
    try:
        parsed: URL = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError: say what is expected
        raise InvalidInput(f"invalid Postgres URL {redact_uri(url)!r}: expected postgresql://USER:PASSWORD@HOST:PORT/DB") from None
    if parsed.get_backend_name() != "postgresql":
        raise InvalidInput(f"invalid Postgres URL {redact_uri(url)!r}: expected postgresql://USER:PASSWORD@HOST:PORT/DB")
    engine = create_engine(
        parsed.set(drivername="postgresql+psycopg"),
        # A connection a restarted server dropped is found before use and replaced, not handed to a caller.
        pool_pre_ping=True, pool_size=4, max_overflow=8, pool_recycle=1800,
        connect_args={"connect_timeout": 10, "application_name": "aiinfra"},
    )
    db = SqlMetadataDB(url, engine, dialect="postgresql")
    db.query("SELECT 1")  # fail now, with the reason, rather than at the first real call
    return db
