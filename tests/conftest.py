from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from pg_server import PostgresNotFound, PostgresServer

from aiinfra.config import PlatformConfig, load_config


def metadata_backend() -> str:
    """Which metadata DB the store suite runs on: ``sqlite`` (default) or ``postgresql`` (AIINFRA_TEST_METADATA),
    where a project-started Postgres (tests/pg_server.py) holds a fresh database per test."""
    backend = os.environ.get("AIINFRA_TEST_METADATA", "sqlite")
    if backend not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"AIINFRA_TEST_METADATA must be sqlite or postgresql, got {backend!r}")
    return backend


@pytest.fixture(scope="session")
def _postgres_admin(postgres):
    """One connection for making and dropping the store suite's per-test schemas (milliseconds, not a database each)."""
    import psycopg

    with psycopg.connect(postgres.url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def postgres_schema_url(postgres, _postgres_admin) -> Iterator[str]:
    """The URL of an empty schema of this test's own in the session's Postgres (its search_path), dropped after."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _postgres_admin.execute(f"CREATE SCHEMA {schema}")
    yield f"{postgres.url}?options=-csearch_path%3D{schema}"
    _postgres_admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def metadata_url(request, tmp_path) -> str:
    """A metadata DB of this test's own, on the backend the run is for (``metadata_backend``)."""
    if metadata_backend() == "postgresql":
        return request.getfixturevalue("postgres_schema_url")
    return f"sqlite:///{tmp_path}/m.db"


@pytest.fixture
def config(request, tmp_path) -> PlatformConfig:
    """A platform config whose storage (and, on SQLite, metadata DB) live in this test's own directory."""
    environ = ({"AIINFRA_METADATA_URL": request.getfixturevalue("postgres_schema_url")}
               if metadata_backend() == "postgresql" else {})
    return load_config(environ=environ, home=str(tmp_path / "home"))


def pytest_collection_modifyitems(config, items):
    """On Postgres, tests of SQLite's own behaviour (its file, its pragmas) are not part of the run."""
    if metadata_backend() == "postgresql":
        kept = [i for i in items if i.get_closest_marker("sqlite_only") is None]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in kept])
            items[:] = kept


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback, with buckets `lake` and `raw`; no cloud access.

    Yields the query string that points a pyarrow s3:// URI at it, and a boto3 client.
    """
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        mp.setenv(key, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        for bucket in ("lake", "raw"):
            client.create_bucket(Bucket=bucket)
        yield {"query": f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", "client": client}
    finally:
        server.stop()
        mp.undo()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for the whole session (tests/pg_server.py), stopped at the end.

    Never skipped: without the binaries the tests that need it fail, saying how to install them.
    """
    try:
        server = PostgresServer()
    except PostgresNotFound as err:
        pytest.fail(str(err), pytrace=False)
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres):
    """The URL of a fresh database of its own for this test, owned by `aiinfra`, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)
