from __future__ import annotations

import socket
import uuid

import pytest
from pg_server import PostgresNotFound, PostgresServer

from aiinfra.config import PlatformConfig, load_config


@pytest.fixture
def config(tmp_path) -> PlatformConfig:
    """A platform config whose storage and metadata DB live in this test's own directory."""
    return load_config(environ={}, home=str(tmp_path / "home"))


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
