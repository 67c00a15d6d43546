"""`aiinfra up`'s hardening, without Ray: the Ray token file, and which local clusters count as this user's."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest

from aiinfra import cluster_access
from aiinfra.cluster_access import ensure_ray_token, foreign_clusters, ray_token_file
from aiinfra.errors import InvalidInput


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_the_ray_token_is_created_0600_before_ray_writes_one(home):
    assert "created" in ensure_ray_token()
    path = ray_token_file()
    assert path == home / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits, as Ray's own generator makes them
    assert "kept" in ensure_ray_token() and path.read_text() == token  # an existing token is never replaced


def test_a_world_readable_token_is_tightened_and_a_link_is_refused(home):
    path = ray_token_file()
    path.parent.mkdir()
    path.write_text("t" * 64)
    path.chmod(0o644)  # what Ray writes under the usual umask
    assert "now 0600" in ensure_ray_token() and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.unlink()
    elsewhere = home / "someone-elses-token"
    elsewhere.write_text("x")
    path.symlink_to(elsewhere)
    with pytest.raises(InvalidInput, match="not a regular file"):
        ensure_ray_token()


def test_only_clusters_this_user_runs_are_joined(monkeypatch):
    me, other = os.getuid(), os.getuid() + 1
    procs = [
        SimpleNamespace(info={"cmdline": ["/x/raylet", "--gcs-address=127.0.0.1:6379", "--node_ip_address=1"],
                              "uids": SimpleNamespace(real=me)}),
        # another user's cluster, as a renamed process keeps its arguments: in one string
        SimpleNamespace(info={"cmdline": ["ray::IDLE --gcs-address=127.0.0.1:6390 --x=1"], "uids": SimpleNamespace(real=other)}),
        SimpleNamespace(info={"cmdline": None, "uids": None}),
    ]
    monkeypatch.setattr(cluster_access.psutil, "process_iter", lambda attrs: iter(procs))
    assert cluster_access._gcs_addresses_by_owner() == {"127.0.0.1:6379": {me}, "127.0.0.1:6390": {other}}
    assert foreign_clusters() == ["127.0.0.1:6390"]
