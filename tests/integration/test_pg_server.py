"""The tests' own PostgreSQL server (tests/pg_server.py): it starts, takes passworded URLs, keeps its data
across restarts and leaves nothing running when stopped. No Ray here."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from pg_server import NOT_FOUND, PostgresFailed, PostgresNotFound, PostgresServer, find_binaries


def psql(url: str, sql: str) -> str:
    """What a client with only the URL gets: psql over TCP, no superuser, no socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(
        [find_binaries().psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        env=env, capture_output=True, text=True, timeout=30,
    )
    if done.returncode != 0:
        raise PostgresFailed(done.stderr.strip())
    return done.stdout.strip()


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (the postmaster's backends and workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_session_server_takes_a_passworded_url_on_loopback(postgres):
    assert re.fullmatch(r"postgresql://aiinfra:[0-9a-f]{32}@127\.0\.0\.1:\d+/aiinfra", postgres.url)
    assert psql(postgres.url, "select current_user || ' ' || current_database()") == "aiinfra aiinfra"
    # The durability tests count on it; listen_addresses keeps it off every other interface.
    assert psql(postgres.url, "show fsync") == "on"
    assert psql(postgres.url, "show listen_addresses") == "127.0.0.1"


def test_a_wrong_password_is_refused(postgres):
    wrong = postgres.url.replace(postgres.password, "0" * 32)
    with pytest.raises(PostgresFailed, match="password authentication failed"):
        psql(wrong, "select 1")


def test_each_test_gets_a_fresh_database_it_owns(postgres, postgres_url):
    assert postgres_url != postgres.url
    assert postgres_url.startswith(postgres.url.rsplit("/", 1)[0] + "/t_")
    assert psql(postgres_url, "select count(*) from pg_tables where schemaname = 'public'") == "0"
    psql(postgres_url, "create table t (x int); insert into t values (1)")
    assert psql(postgres_url, "select sum(x) from t") == "1"


def test_restart_keeps_data_and_the_url():
    with PostgresServer() as server:
        url, first_pid = server.url, server.pid
        psql(url, "create table runs (id bigint primary key, seed bigint); insert into runs values (1, 9007199254740993)")

        server.restart()
        assert server.url == url and server.pid != first_pid
        assert psql(url, "select seed from runs where id = 1") == "9007199254740993"

        # A crash-like stop: the WAL, fsynced, brings back the committed row.
        psql(url, "insert into runs values (2, 2)")
        server.restart(mode="immediate")
        assert psql(url, "select count(*) from runs") == "2"


def test_stop_leaves_no_process_and_close_removes_the_files():
    server = PostgresServer().start()
    pid = server.pid
    assert pid is not None
    workers = children(pid)
    assert workers  # checkpointer, walwriter, ...
    base = server.base

    server.stop()
    assert server.pid is None
    assert not alive(pid)
    assert not any(alive(w) for w in workers)
    with pytest.raises(PostgresFailed):
        psql(server.url, "select 1")

    server.close()
    assert not base.exists()


def test_missing_binaries_say_how_to_install_them(tmp_path):
    with pytest.raises(PostgresNotFound, match=re.escape(NOT_FOUND)):
        find_binaries({"PG_BIN": str(tmp_path), "PATH": ""})
