"""The metadata DB on a real Postgres when the server misbehaves: down at start, restarted under load.

No Ray: the registry's plain class over the DB, as the registry actor runs it. Each test starts its own
server (tests/pg_server.py, about a second) so it can stop and restart it.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from pg_server import PostgresServer, free_port

from aiinfra.config import load_config
from aiinfra.errors import ServiceUnavailable
from aiinfra.platform import open_local
from aiinfra.storage import open_metadata_db


@pytest.fixture
def server():
    with PostgresServer() as s:
        yield s


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.safetensors").write_bytes(os.urandom(64))
    return d


def test_a_server_that_is_down_at_start_is_a_503_naming_it_without_the_password():
    port = free_port()  # nothing listens here
    with pytest.raises(ServiceUnavailable) as err:
        open_metadata_db(f"postgresql://aiinfra:hunter2-secret@127.0.0.1:{port}/aiinfra")
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "hunter2-secret" not in message and "***" in message
    assert "check that the server runs" in message
    assert err.value.status_code == 503


def test_a_wrong_password_says_so_without_repeating_it(server):
    wrong = server.url.replace(server.password, "not-the-password")
    with pytest.raises(ServiceUnavailable, match="password authentication failed") as err:
        open_metadata_db(wrong)
    assert "not-the-password" not in str(err.value)


def test_a_restart_under_load_loses_nothing_acknowledged_and_recovers_by_itself(server, model_dir, tmp_path):
    """A writer registers versions while the server restarts (fast, then as after a crash): calls that needed
    the server meanwhile get a 503 with retry advice, never a driver exception; every acknowledged version is
    stored, versions stay 1..n, and writes succeed again without anyone reconnecting by hand."""
    config = load_config(environ={"AIINFRA_METADATA_URL": server.url}, home=str(tmp_path / "home"))
    platform = open_local(config)
    acked: list[int] = []
    refused: list[str] = []
    other: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            try:
                acked.append(platform.registry.register("churn", model_dir).version)
            except ServiceUnavailable as e:
                refused.append(str(e))
                time.sleep(0.05)
            except BaseException as e:  # noqa: BLE001 - the test's point: nothing else may come out
                other.append(e)
                return

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(1.0)
        for mode in ("fast", "immediate"):
            before = len(refused)
            server.stop(mode)
            time.sleep(1.0)  # writes meet a server that is not there
            assert len(refused) > before, "no call needed the server while it was down"
            server.start()
            n = len(acked)
            deadline = time.monotonic() + 30
            while len(acked) <= n + 3:
                assert time.monotonic() < deadline, "writes did not resume after the restart"
                assert not other, other
                time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not other, f"a raw error reached the caller: {other[0]!r}"
    assert all("retry" in r and server.password not in r for r in refused)
    stored = [v.version for v in platform.registry.list_versions("churn")]
    assert stored == list(range(1, len(stored) + 1)), "versions are 1..n with no gaps or repeats"
    assert set(acked) <= set(stored) and len(acked) == len(set(acked))
    platform.close()


def test_served_models_upsert_and_remove_on_postgres(postgres_url):
    """The endpoint's model rows on Postgres (its ON CONFLICT upsert is the same SQL SQLite runs)."""
    from aiinfra.errors import NotFound
    from aiinfra.serving.endpoint import ServedModels

    db = open_metadata_db(postgres_url)
    try:
        added = ServedModels(db)
        added.add("aiinfra", "churn@champion", who="alice")
        added.add("aiinfra", "fraud@3")
        added.add("aiinfra", "churn@2")  # replaced by name
        assert ServedModels(db).of("aiinfra") == {"churn": "churn@2", "fraud": "fraud@3"}  # a second opener sees it
        assert added.remove("aiinfra", "fraud") == "fraud@3"
        with pytest.raises(NotFound):
            added.remove("aiinfra", "fraud")
        assert added.clear("aiinfra") == 1 and added.of("aiinfra") == {}
    finally:
        db.close()
