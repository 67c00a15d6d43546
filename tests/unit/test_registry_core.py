from __future__ import annotations

import itertools
import os
import threading

import pytest

from aiinfra.errors import ArtifactCorrupted, Conflict, InvalidInput, NotFound
from aiinfra.platform import open_local
from aiinfra.registry.core import ModelRegistry
from aiinfra.registry.files import stage_model_dir
from aiinfra.storage import open_artifact_store, open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store

SIGNATURE = {
    "inputs": [{"name": "age", "dtype": "float32"}, {"name": "plan", "dtype": "string", "categories": ["a", "b"]}],
    "outputs": [{"name": "probability", "dtype": "float32"}],
}


@pytest.fixture
def platform(config):
    p = open_local(config)
    yield p
    p.close()


@pytest.fixture
def registry(platform):
    return platform.registry


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "weights.safetensors").write_bytes(os.urandom(256))
    (d / "sub" / "config.json").write_text('{"hidden": 8}')
    return d


def test_register_get_and_files(registry, model_dir, tmp_path):
    v = registry.register(
        "churn", model_dir, metrics={"auc": 0.91}, params={"lr": 0.01}, signature=SIGNATURE,
        lineage={"dataset_version": "ds-abc", "run_id": "run-1", "code_version": "git:1234"},
    )
    assert (v.name, v.version, v.status) == ("churn", 1, "active")
    assert sorted(v.files) == ["sub/config.json", "weights.safetensors"]
    assert v.artifact_uri.endswith("models/churn/1")
    assert v.signature.inputs[1].categories == ["a", "b"]
    assert v.lineage.dataset_version == "ds-abc" and v.metrics == {"auc": 0.91}
    out = registry.download("churn@1", tmp_path / "dl")
    assert (out / "weights.safetensors").read_bytes() == (model_dir / "weights.safetensors").read_bytes()
    assert registry.get("churn") == registry.get("churn@1") == registry.get("churn@latest")


def test_versions_count_up_and_aliases_move(registry, model_dir):
    for _ in range(3):
        registry.register("churn", model_dir)
    assert [v.version for v in registry.list_versions("churn")] == [1, 2, 3]
    registry.set_alias("churn", 1, "champion")
    registry.set_alias("churn", 3, "challenger")
    assert registry.get("churn@champion").version == 1
    registry.set_alias("churn", 2, "champion")
    assert registry.get("churn@champion").version == 2
    assert registry.get("churn@2").aliases == ["champion"]
    moves = [a for a in registry.audit("churn") if a.action == "set_alias" and a.after["alias"] == "champion"]
    assert [(m.before, m.after["version"]) for m in moves] == [(None, 1), ({"alias": "champion", "version": 1}, 2)]
    assert all(a.who and a.ts > 0 for a in registry.audit("churn"))
    summary = registry.list_models()[0]
    assert (summary.name, summary.latest_version, summary.version_count) == ("churn", 3, 3)
    assert summary.aliases == {"champion": 2, "challenger": 3}


def test_not_found_names_what_is_missing(registry, model_dir):
    with pytest.raises(NotFound, match="'ghost'"):
        registry.get("ghost@1")
    registry.register("churn", model_dir)
    with pytest.raises(NotFound, match="no version 7"):
        registry.get("churn@7")
    with pytest.raises(NotFound, match="no alias 'champion'"):
        registry.get("churn@champion")
    with pytest.raises(NotFound, match="no version 9"):
        registry.set_alias("churn", 9, "champion")


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", "a..b", "x" * 129, "bad\nname", "tab\tname", "a\\b", "-lead", "sp ace", 7],
)
def test_invalid_names_refused_before_storage(registry, model_dir, config, name):
    with pytest.raises(InvalidInput):
        registry.register(name, model_dir)
    assert not (config.home / "staging").exists()
    assert not (config.home / "models").exists()


@pytest.mark.parametrize("alias", ["", "12", "latest", "a/b", "..x"])
def test_invalid_aliases(registry, model_dir, alias):
    registry.register("churn", model_dir)
    with pytest.raises(InvalidInput):
        registry.set_alias("churn", 1, alias)


@pytest.mark.parametrize("ref", ["churn@", "churn@0", "@1", "a/b@1", None])
def test_invalid_refs(registry, ref):
    with pytest.raises(InvalidInput):
        registry.get(ref)


def test_bad_metadata_refused_before_upload(registry, model_dir, config):
    with pytest.raises(InvalidInput, match="finite"):
        registry.register("churn", model_dir, metrics={"auc": float("nan")})
    with pytest.raises(InvalidInput, match="dtype"):
        registry.register("churn", model_dir, signature={"inputs": [{"name": "x", "dtype": "complex"}]})
    with pytest.raises(InvalidInput, match="parent_version"):
        registry.register("churn", model_dir, lineage={"parent_version": "not a number"})
    assert not (config.home / "staging").exists()
    with pytest.raises(InvalidInput, match="not a directory"):
        registry.register("churn", model_dir / "missing")


def test_tampered_artifact_refused_naming_the_file(registry, model_dir, config, tmp_path):
    registry.register("churn", model_dir)
    stored = config.home / "models/churn/1/weights.safetensors"
    stored.write_bytes(b"evil" + stored.read_bytes()[4:])
    with pytest.raises(ArtifactCorrupted, match="weights.safetensors"):
        registry.download("churn@1", tmp_path / "dl")


def test_idempotent_register(registry, model_dir):
    a = registry.register("churn", model_dir, idempotency_key="run-42")
    b = registry.register("churn", model_dir, idempotency_key="run-42")
    assert a == b and len(registry.list_versions("churn")) == 1


def test_commit_retry_after_lost_reply_returns_same_version(config, model_dir):
    """The actor-side path: the same staged upload committed twice (a retry) makes one version."""
    store = open_artifact_store(config.storage_root)
    core = ModelRegistry(open_metadata_db(config.metadata_url), store)
    staged = stage_model_dir(store, model_dir)
    first = core.commit_version("churn", staged, idempotency_key="k1")
    again = core.commit_version("churn", staged, idempotency_key="k1")
    assert first == again and [v.version for v in core.list_versions("churn")] == [1]
    assert not store.exists(f"{staged.key}/weights.safetensors")  # staging cleaned up


def test_archive_never_deletes(registry, model_dir):
    registry.register("churn", model_dir)
    registry.register("churn", model_dir)
    registry.set_alias("churn", 1, "champion")
    with pytest.raises(Conflict, match="champion"):
        registry.archive("churn", 1)
    archived = registry.archive("churn", 2, reason="superseded")
    assert archived.status == "archived"
    assert registry.get("churn@2").status == "archived"  # still there
    assert [v.version for v in registry.list_versions("churn", include_archived=False)] == [1]
    with pytest.raises(Conflict, match="archived"):
        registry.set_alias("churn", 2, "champion")
    assert registry.get("churn").version == 1  # latest active


def test_concurrent_alias_moves_last_wins_and_both_audited(config, model_dir):
    """Two processes' worth of writers (separate connections) moving one alias at once."""
    setup = open_local(config)
    for _ in range(2):
        setup.registry.register("churn", model_dir)
    clients = [open_local(config) for _ in range(2)]
    barrier = threading.Barrier(2)
    n = 25

    def mover(client, version):
        barrier.wait()
        for _ in range(n):
            client.registry.set_alias("churn", version, "champion")

    threads = [threading.Thread(target=mover, args=(c, v)) for c, v in zip(clients, (1, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    moves = [a for a in setup.registry.audit("churn") if a.action == "set_alias"]
    assert len(moves) == 2 * n
    assert setup.registry.get("churn@champion").version == moves[-1].after["version"]
    # The log is a consistent history: each move's "before" is the previous move's "after".
    for prev, cur in itertools.pairwise(moves):
        assert cur.before == {"alias": "champion", "version": prev.after["version"]}
    # Concurrent writers on separate connections still leave one unbroken chain.
    assert setup.registry.verify_audit("churn") == {"model": "churn", "rows": 2 * n + 3, "intact": True,
                                                    "first_broken": None, "reason": ""}
    for c in [setup, *clients]:
        c.close()


def test_the_audit_log_is_hash_chained_and_verify_names_the_first_broken_row(config, model_dir):
    p = open_local(config)
    try:
        p.registry.register("churn", model_dir)
        p.registry.set_alias("churn", 1, "champion")
        p.registry.set_alias("churn", 1, "challenger")
        p.registry.register("other", model_dir)  # another model's chain is its own
        assert p.registry.verify_audit("churn")["intact"] and p.registry.verify_audit("other")["intact"]
        db = open_metadata_db(config.metadata_url)  # a connection of its own, as someone with database access
        ids = [r["id"] for r in db.query("SELECT id FROM audit_log WHERE model = 'churn' ORDER BY id")]
        with db.transaction() as tx:  # someone with database access rewrites who moved the champion
            tx.execute("UPDATE audit_log SET who = 'nobody' WHERE id = ?", (ids[2],))
        check = p.registry.verify_audit("churn")
        assert not check["intact"] and check["first_broken"] == ids[2] and "changed" in check["reason"]
        with db.transaction() as tx:  # ... or deletes the row
            tx.execute("DELETE FROM audit_log WHERE id = ?", (ids[2],))
        check = p.registry.verify_audit("churn")
        assert check["first_broken"] == ids[3] and "deleted or inserted" in check["reason"]
        assert p.registry.verify_audit("other")["intact"]
        db.close()
    finally:
        p.close()


def test_audit_rows_from_before_the_chain_are_sealed_once_on_upgrade(config, model_dir):
    from aiinfra.registry.core import COMPONENT, MIGRATIONS

    db = open_metadata_db(config.metadata_url, create=True)
    db.ensure_schema(COMPONENT, MIGRATIONS[:3])  # the log as the previous release made it
    with db.transaction() as tx:
        tx.execute("INSERT INTO models (name, created_at, created_by) VALUES ('old', 1.0, 'x')")
        for i in range(3):
            tx.execute("INSERT INTO audit_log (ts, who, model, action, version, before, after) "
                       "VALUES (?, 'x', 'old', 'set_alias', 1, NULL, ?)", (float(i), f'{{"n": {i}}}'))
    registry = ModelRegistry(db, open_artifact_store(config.storage_root))
    assert registry.verify_audit("old") == {"model": "old", "rows": 3, "intact": True, "first_broken": None,
                                            "reason": ""}
    assert [e.after for e in registry.audit("old")] == [{"n": 0}, {"n": 1}, {"n": 2}]
    db.close()


def test_concurrent_registrations_get_gap_free_unique_versions(config, model_dir):
    """Writers on separate connections (as on separate nodes) registering one model at once: versions 1..n,
    none twice, none skipped (on Postgres the write transactions queue on an advisory lock)."""
    clients = [open_local(config) for _ in range(4)]
    barrier = threading.Barrier(len(clients))
    per_writer = 8
    got: list[int] = []

    def writer(client):
        barrier.wait()
        for _ in range(per_writer):
            got.append(client.registry.register("churn", model_dir).version)

    threads = [threading.Thread(target=writer, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = len(clients) * per_writer
    assert sorted(got) == list(range(1, n + 1))
    assert [v.version for v in clients[0].registry.list_versions("churn")] == list(range(1, n + 1))
    for c in clients:
        c.close()


def test_timestamps_keep_sub_second_precision(registry, model_dir):
    """Stored as double precision: a 4-byte REAL would round today's epoch seconds to minutes."""
    import time

    before = time.time()
    v = registry.register("churn", model_dir)
    assert abs(v.created_at - before) < 5 and v.created_at != round(v.created_at, -2)
    assert registry.get("churn@1").created_at == v.created_at


def test_registry_reloads_from_db(config, model_dir):
    """What a restarted actor does: a new instance over the same files sees everything."""
    first = open_local(config)
    first.registry.register("churn", model_dir, metrics={"auc": 0.8})
    first.registry.set_alias("churn", 1, "champion")
    first.close()
    second = open_local(config)
    assert second.registry.get("churn@champion").metrics == {"auc": 0.8}
    second.close()


def test_an_alias_carries_its_traffic_share_and_a_plain_move_clears_it(registry, model_dir):
    registry.register("churn", model_dir)
    registry.register("churn", model_dir)
    v = registry.set_alias("churn", 2, "challenger", share=0.3)
    assert v.alias_shares == {"challenger": 0.3}
    assert registry.get("churn@challenger").alias_shares == {"challenger": 0.3}
    assert registry.get("churn@2").alias_shares == {"challenger": 0.3}  # the version holds it, whatever the ref
    assert registry.set_alias("churn", 2, "challenger").alias_shares == {}  # no share: the serving default
    entry = registry.audit("churn")[-2]
    assert entry.after == {"alias": "challenger", "version": 2, "share": 0.3}
    with pytest.raises(InvalidInput, match="share"):
        registry.set_alias("churn", 2, "challenger", share=1.5)


def test_a_database_from_before_alias_shares_is_upgraded_in_place(config, model_dir):
    from aiinfra.registry.core import COMPONENT, MIGRATIONS

    db = open_metadata_db(config.metadata_url)
    db.ensure_schema(COMPONENT, MIGRATIONS[:2])  # the schema as version 2 left it, with a row in it
    with db.transaction() as tx:
        tx.execute("INSERT INTO models (name, created_at, created_by) VALUES ('old', 1.0, 'me')")
    p = open_local(config)
    try:
        assert [m.name for m in p.registry.list_models()] == ["old"]
        p.registry.register("old", model_dir)
        assert p.registry.set_alias("old", 1, "champion").alias_shares == {}
        assert p.registry.set_alias("old", 1, "challenger", share=0.25).alias_shares == {"challenger": 0.25}
    finally:
        p.close()
