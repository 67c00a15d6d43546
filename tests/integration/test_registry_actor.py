from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import uuid

import pytest
import ray
from ray_helpers import actor_pid

from aiinfra.config import load_config
from aiinfra.errors import (
    ArtifactCorrupted,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from aiinfra.features.actor import get_feature_store_actor
from aiinfra.platform import connect
from aiinfra.registry.actor import REGISTRY_ACTOR, get_registry_actor


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.safetensors").write_bytes(os.urandom(64))
    return d


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_actor_is_a_named_detached_zero_cpu_service(platform, platform_config):
    platform.registry.list_models()
    # num_cpus=0: the service holds no CPU that Train or Data could use
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
    handle = ray.get_actor(REGISTRY_ACTOR, namespace="aiinfra")
    assert ray.get(handle.pid.remote()) > 0
    # connect() again finds the same actor rather than making a second one
    again = connect(platform_config)
    assert ray.get(get_registry_actor(platform_config).pid.remote()) == ray.get(handle.pid.remote())
    assert not again.started_ray


def test_round_trip_through_the_actor(platform, model_dir, tmp_path):
    name = unique("rt")
    v = platform.registry.register(name, model_dir, metrics={"acc": 0.7}, lineage={"run_id": "r1"})
    assert v.version == 1
    platform.registry.set_alias(name, 1, "champion")
    got = platform.registry.get(f"{name}@champion")
    assert got.version == 1 and got.lineage.run_id == "r1" and got.aliases == ["champion"]
    assert [e.action for e in platform.registry.audit(name)] == ["create_model", "register", "set_alias"]
    assert (platform.registry.download(got, tmp_path / "dl") / "weights.safetensors").exists()


def test_the_actor_checks_approver_tokens_and_names_the_calling_job(platform, platform_config, model_dir):
    """The audit's ``who`` is decided in the actor: from a token it checked, else the caller's process and Ray job."""
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.storage import open_metadata_db

    name = unique("appr")
    for _ in range(2):
        platform.registry.register(name, model_dir)
    platform.registry.set_alias(name, 1, "champion")
    platform.registry.set_policy(name, {"aliases": {"champion": {"approvals": 1}}})
    db = open_metadata_db(platform_config.metadata_url)
    try:
        tokens = TokenStore(db, background=False)
        approver, predict = tokens.issue("approver", who="test"), tokens.issue("predict", who="test")
        request = platform.registry.request_alias(name, 2, "champion")
        with pytest.raises(Forbidden, match="to approve req-[0-9a-f]+, send an API token"):
            platform.registry.approve(request.id)
        with pytest.raises(Forbidden, match="'predict' token may not approve"):
            platform.registry.with_token(predict.token).approve(request.id)
        tokens.revoke(predict.id)
        with pytest.raises(Unauthorized, match="revoked"):
            platform.registry.with_token(predict.token).request_alias(name, 2, "champion")
        done = platform.registry.with_token(approver.token).approve(request.id)
    finally:
        db.close()
    assert done.status == "applied" and done.decided_by == f"token:{approver.id}"
    job = ray.get_runtime_context().get_job_id()
    audit = platform.registry.audit(name)
    assert audit[0].who.endswith(f"(job {job})") and "@" in audit[0].who  # this driver, by its Ray job
    assert audit[-1].action == "set_alias" and audit[-1].who == f"token:{approver.id}"
    assert platform.registry.get(f"{name}@champion").version == 2


def test_errors_cross_the_actor_boundary_as_themselves(platform, model_dir, platform_config):
    name = unique("err")
    with pytest.raises(NotFound, match=f"'{name}' is not registered") as exc:
        platform.registry.get(f"{name}@champion")
    assert type(exc.value) is NotFound  # not a RayTaskError wrapper
    with pytest.raises(InvalidInput):
        platform.registry.register("../escape", model_dir)
    platform.registry.register(name, model_dir)
    stored = platform_config.home / f"models/{name}/1/weights.safetensors"
    stored.write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactCorrupted, match="weights.safetensors"):
        platform.registry.download(f"{name}@1", model_dir.parent / "dl")


@pytest.fixture
def postgres_platform(ray_session, postgres_url, tmp_path):
    """The platform on a Postgres metadata DB, its actors in a namespace of their own (the session's stay)."""
    config = load_config(environ={"AIINFRA_METADATA_URL": postgres_url}, home=str(tmp_path / "pg-home"),
                         namespace=f"aiinfra-pg-{uuid.uuid4().hex[:6]}")
    p = connect(config)
    yield p, config
    ray.kill(get_registry_actor(config, create=False), no_restart=True)
    ray.kill(get_feature_store_actor(config, create=False), no_restart=True)
    p.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """The session's platform (SQLite), or one on a project-started Postgres."""
    if request.param == "sqlite":
        return request.getfixturevalue("platform"), request.getfixturevalue("platform_config")
    return request.getfixturevalue("postgres_platform")


WRITES = 150


def test_acknowledged_writes_survive_sigkill_at_random_points(backend, tmp_path):
    """150 writes; before about one in twenty (10 with this seed), a timer SIGKILLs the registry actor's process a random
    few milliseconds later, so kills land inside staging, the commit's copy, or the DB's commit.

    Acknowledged must be a subset of stored; no version is duplicated; the DB stays intact. Run on
    SQLite and on Postgres. (Each kill costs about 2 s here: that is how long Ray takes to notice the death.)
    """
    platform, platform_config = backend
    name = unique("kill")
    handle = get_registry_actor(platform_config)
    rng = random.Random(1234)
    kills = 0
    acked: dict[int, str] = {}  # version -> sha256 of the file it was given
    aliases_acked: list[int] = []
    unacked = 0
    for i in range(WRITES):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "w.bin").write_bytes(f"write {i} ".encode() * 8)
        key = f"write-{i}" if i % 2 == 0 else None  # half explicit keys, half the client's own
        timer = None
        if rng.random() < 0.05:
            pid = actor_pid(handle)
            timer = threading.Timer(rng.uniform(0.0, 0.006), os.kill, (pid, signal.SIGKILL))
            timer.start()
            kills += 1
        try:
            v = platform.registry.register(name, d, idempotency_key=key, metrics={"i": i})
            acked[v.version] = v.files["w.bin"].sha256
            if i % 10 == 0:
                platform.registry.set_alias(name, v.version, "champion")
                aliases_acked.append(v.version)
        except ServiceUnavailable:
            unacked += 1
        if timer is not None:
            timer.join()

    assert kills >= 8, f"only {kills} kills: the test did not exercise restarts"
    stored = platform.registry.list_versions(name)
    versions = [v.version for v in stored]
    assert versions == list(range(1, len(stored) + 1)), "versions are 1..n with no gaps or repeats"
    by_version = {v.version: v for v in stored}
    for version, sha in acked.items():
        assert version in by_version, f"acknowledged version {version} was lost"
        assert by_version[version].files["w.bin"].sha256 == sha
    # no write was applied twice: each write's metric value i appears at most once
    seen = [int(v.metrics["i"]) for v in stored]
    assert len(seen) == len(set(seen)), "a retried write created a duplicate version"
    assert len(acked) + unacked == WRITES and len(stored) >= len(acked)
    assert platform.registry.get(f"{name}@champion").version == aliases_acked[-1]
    if platform_config.metadata_url.startswith("sqlite:"):
        with sqlite3.connect(platform_config.home / "metadata.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for v in stored:
        platform.registry.download(v, tmp_path / "verify" / str(v.version))
    print(f"{kills} kills, {len(acked)} acknowledged, {unacked} unacknowledged, {len(stored)} stored")
