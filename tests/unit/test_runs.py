from __future__ import annotations

import math

import numpy as np
import pytest

from aiinfra.errors import Conflict, InvalidInput, NotFound
from aiinfra.registry.core import ModelRegistry
from aiinfra.registry.files import stage_model_dir
from aiinfra.registry.runs import COMPONENT, RunStore
from aiinfra.storage import open_artifact_store, open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def db_url(metadata_url):
    return metadata_url


@pytest.fixture
def runs(db_url, clock):
    db = open_metadata_db(db_url)
    yield RunStore(db, clock=clock)
    db.close()


def test_start_log_finish_get_round_trip(runs, clock):
    run = runs.start_run(
        experiment="churn", params={"lr": np.float32(0.5), "model": {"depth": np.int64(3)}},
        config_hash="abc123", seed=np.int64(7), dataset_versions=["ds-1"], code_version={"git": "deadbeef"},
        who="alice",
    )
    assert run.run_id.startswith("run-") and len(run.run_id) == 16
    assert (run.status, run.kind, run.created_by, run.started_at, run.ended_at) == ("running", "train", "alice", 1000.0, None)
    assert run.params == {"lr": 0.5, "model": {"depth": 3}} and run.seed == 7 and run.duration_s is None

    clock.tick(5)
    n = runs.log_epochs(run.run_id, [
        {"epoch": 0, "loss": np.float32(1.5), "acc": 0.5, "note": "warmup", "done": False},
        {"epoch": 1, "loss": 1.0, "acc": np.float64(0.75)},
    ])
    assert n == 2
    clock.tick(5)
    done = runs.finish_run(
        run.run_id, status="finished", metrics={"acc": np.float64(0.8), "loss": 0.9, "tag": "x"},
        artifacts={"model": "models/churn/1"}, cpu_seconds=12.5, gpu_seconds=np.float32(3.0),
    )
    assert (done.status, done.ended_at, done.duration_s) == ("finished", 1010.0, 10.0)
    assert done.metrics == {"acc": 0.8, "loss": 0.9}
    assert done.artifacts == {"model": "models/churn/1"} and (done.cpu_seconds, done.gpu_seconds) == (12.5, 3.0)

    got = runs.get_run(run.run_id)
    assert got == done
    assert [(e.step, e.ts, e.metrics) for e in got.epochs] == [
        (0, 1005.0, {"loss": 1.5, "acc": 0.5}), (1, 1005.0, {"loss": 1.0, "acc": 0.75}),
    ]
    assert all(type(v) is float for e in got.epochs for v in e.metrics.values())


def test_start_is_idempotent(runs, clock):
    first = runs.start_run(experiment="churn", run_id="trial-0001", params={"lr": 0.1})
    clock.tick(60)
    again = runs.start_run(experiment="churn", run_id="trial-0001", params={"lr": 999})
    assert again == first and again.params == {"lr": 0.1} and again.started_at == 1000.0
    assert len(runs.list_runs()) == 1
    with pytest.raises(Conflict, match="already exists in experiment 'churn'"):
        runs.start_run(experiment="other", run_id="trial-0001")


def test_finish_is_idempotent_and_conflicting_status_is_refused(runs, clock):
    run = runs.start_run(experiment="churn")
    first = runs.finish_run(run.run_id, status="stopped", metrics={"loss": 0.3})
    clock.tick(30)
    again = runs.finish_run(run.run_id, status="stopped", metrics={"loss": 0.1})
    assert again == first and again.metrics == {"loss": 0.3}
    with pytest.raises(Conflict, match="already ended as 'stopped'"):
        runs.finish_run(run.run_id, status="finished")
    with pytest.raises(InvalidInput, match="finishes as one of"):
        runs.finish_run(run.run_id, status="running")


def test_failed_run_keeps_error(runs):
    run = runs.start_run(experiment="churn")
    failed = runs.finish_run(run.run_id, status="failed", error="CUDA out of memory")
    assert (failed.status, failed.error) == ("failed", "CUDA out of memory")


def test_log_epochs_upserts_by_step(runs, clock):
    run = runs.start_run(experiment="churn")
    runs.log_epochs(run.run_id, [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.9, "acc": 0.5}])
    clock.tick(10)
    # A resumed run re-reports step 2: one row, holding the latest values.
    assert runs.log_epochs(run.run_id, [{"epoch": 2, "loss": 0.7}, {"epoch": 3, "loss": 0.6}]) == 2
    epochs = runs.get_run(run.run_id).epochs
    assert [(e.step, e.metrics) for e in epochs] == [(1, {"loss": 1.0}), (2, {"loss": 0.7}), (3, {"loss": 0.6})]
    assert epochs[1].ts == 1010.0
    # Within one call the last entry for a step wins.
    assert runs.log_epochs(run.run_id, [{"epoch": 4, "loss": 0.5}, {"epoch": 4, "loss": 0.4}]) == 1
    assert runs.get_run(run.run_id).epochs[-1].metrics == {"loss": 0.4}


def test_nan_and_inf_are_dropped(runs):
    run = runs.start_run(experiment="churn")
    runs.log_epochs(run.run_id, [{"epoch": 0, "loss": float("nan"), "acc": 0.5, "grad": np.float32("inf")}])
    assert runs.get_run(run.run_id).epochs[0].metrics == {"acc": 0.5}
    done = runs.finish_run(run.run_id, status="finished", metrics={"loss": math.nan, "acc": -math.inf, "f1": 0.4})
    assert done.metrics == {"f1": 0.4}


def test_log_epochs_validation(runs):
    with pytest.raises(NotFound, match="'run-nope'"):
        runs.log_epochs("run-nope", [{"epoch": 0, "loss": 1.0}])
    run = runs.start_run(experiment="churn")
    with pytest.raises(InvalidInput, match="'epoch'"):
        runs.log_epochs(run.run_id, [{"loss": 1.0}])
    assert runs.log_epochs(run.run_id, []) == 0


def test_prefix_lookup_and_ambiguity(runs):
    a = runs.start_run(experiment="churn", run_id="run-aaaa1111")
    runs.start_run(experiment="churn", run_id="run-aaaa2222")
    assert runs.get_run("run-aaaa1").run_id == a.run_id
    assert runs.get_run("aaaa1").run_id == a.run_id  # the run- of generated ids may be left out
    with pytest.raises(Conflict, match="ambiguous.*run-aaaa1111.*run-aaaa2222"):
        runs.get_run("run-aaaa")
    with pytest.raises(NotFound, match="at least 4 characters"):
        runs.get_run("run")
    generated = runs.start_run(experiment="churn")
    assert runs.get_run(generated.run_id[:10]).run_id == generated.run_id


def test_prefix_is_literal_not_a_like_pattern(runs):
    runs.start_run(experiment="churn", run_id="a_b_c_one")
    with pytest.raises(NotFound):
        runs.get_run("a%b_")
    assert runs.get_run("a_b_").run_id == "a_b_c_one"


def test_unknown_run_not_found(runs):
    with pytest.raises(NotFound, match="no run 'run-ghost'"):
        runs.get_run("run-ghost")
    with pytest.raises(NotFound):
        runs.finish_run("run-ghost", status="finished")


def test_parent_must_exist(runs):
    with pytest.raises(NotFound, match="parent run 'run-missing'"):
        runs.start_run(experiment="sweep", kind="trial", parent_run_id="run-missing")
    assert runs.list_runs() == []
    parent = runs.start_run(experiment="sweep", kind="tune")
    child = runs.start_run(experiment="sweep", kind="trial", parent_run_id=parent.run_id)
    assert child.parent_run_id == parent.run_id


def test_input_validation(runs):
    with pytest.raises(InvalidInput, match="experiment name"):
        runs.start_run(experiment="../etc")
    with pytest.raises(InvalidInput, match="kind"):
        runs.start_run(experiment="churn", kind="bogus")
    with pytest.raises(InvalidInput, match="seed"):
        runs.start_run(experiment="churn", seed="7")
    with pytest.raises(InvalidInput, match="run id"):
        runs.start_run(experiment="churn", run_id="a/b")
    with pytest.raises(InvalidInput, match="status"):
        runs.list_runs(status="done")
    with pytest.raises(InvalidInput, match="limit"):
        runs.list_runs(limit=0)


def test_list_filters_and_newest_first(runs, clock):
    tune = runs.start_run(experiment="sweep", kind="tune", run_id="tune-1")
    trials = []
    for i in range(3):
        clock.tick()
        trials.append(runs.start_run(experiment="sweep", kind="trial", run_id=f"trial-{i}", parent_run_id="tune-1"))
    clock.tick()
    other = runs.start_run(experiment="churn", run_id="train-1")
    runs.finish_run("trial-1", status="stopped")
    runs.log_epochs("trial-0", [{"epoch": 0, "loss": 1.0}])

    assert [r.run_id for r in runs.list_runs()] == ["train-1", "trial-2", "trial-1", "trial-0", "tune-1"]
    assert [r.run_id for r in runs.list_runs(experiment="sweep", kind="trial")] == ["trial-2", "trial-1", "trial-0"]
    assert [r.run_id for r in runs.list_runs(parent_run_id=tune.run_id)] == ["trial-2", "trial-1", "trial-0"]
    assert [r.run_id for r in runs.list_runs(status="stopped")] == ["trial-1"]
    assert [r.run_id for r in runs.list_runs(experiment="sweep", status="running", limit=2)] == ["trial-2", "trial-0"]
    assert [r.run_id for r in runs.list_runs(experiment="churn")] == [other.run_id]
    assert all(r.epochs == [] for r in runs.list_runs())  # listings carry no epochs
    assert runs.list_runs(experiment="nothing") == []


def test_compare(runs):
    a = runs.start_run(
        experiment="churn", params={"lr": 0.1, "model": {"depth": 3, "act": "relu"}, "bs": 32},
        config_hash="h1", seed=1, dataset_versions=["ds-1"], code_version={"git": "aaa"},
    )
    b = runs.start_run(
        experiment="churn", params={"lr": 0.2, "model": {"depth": 3}, "wd": 0.01},
        config_hash="h2", seed=1, dataset_versions=["ds-1"], code_version={"git": "bbb"},
    )
    runs.finish_run(a.run_id, status="finished", metrics={"acc": 0.75, "loss": 0.5})
    runs.finish_run(b.run_id, status="finished", metrics={"acc": 0.875, "f1": 0.7})

    diff = runs.compare(a.run_id, b.run_id[:8])
    assert diff["runs"] == [a.run_id, b.run_id]
    assert diff["params"] == {
        "bs": {"a": 32, "b": None, "same": False},
        "lr": {"a": 0.1, "b": 0.2, "same": False},
        "model.act": {"a": "relu", "b": None, "same": False},
        "model.depth": {"a": 3, "b": 3, "same": True},
        "wd": {"a": None, "b": 0.01, "same": False},
    }
    assert diff["metrics"] == {
        "acc": {"a": 0.75, "b": 0.875, "delta": 0.125},
        "f1": {"a": None, "b": 0.7, "delta": None},
        "loss": {"a": 0.5, "b": None, "delta": None},
    }
    assert diff["dataset_versions"] == {"a": ["ds-1"], "b": ["ds-1"], "same": True}
    assert diff["code_version"] == {"a": {"git": "aaa"}, "b": {"git": "bbb"}, "same": False}
    assert diff["config_hash"] == {"a": "h1", "b": "h2", "same": False}
    assert diff["seed"] == {"a": 1, "b": 1, "same": True}


def test_reopened_db_sees_everything(db_url, clock):
    db = open_metadata_db(db_url)
    store = RunStore(db, clock=clock)
    parent = store.start_run(experiment="sweep", kind="tune")
    child = store.start_run(experiment="sweep", kind="trial", parent_run_id=parent.run_id, params={"lr": 0.1})
    store.log_epochs(child.run_id, [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}])
    finished = store.finish_run(child.run_id, status="finished", metrics={"loss": 0.5}, artifacts={"ckpt": "s3://x/y"})
    db.close()

    db2 = open_metadata_db(db_url)
    try:
        reopened = RunStore(db2, clock=clock)
        assert reopened.get_run(child.run_id) == finished
        assert [e.step for e in reopened.get_run(child.run_id).epochs] == [0, 1]
        assert [r.run_id for r in reopened.list_runs(parent_run_id=parent.run_id)] == [child.run_id]
        assert db2.schema_version(COMPONENT) == 1
    finally:
        db2.close()


def test_shares_one_db_with_the_model_registry(config, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\x00" * 64)
    store = open_artifact_store(config.storage_root)
    db = open_metadata_db(config.metadata_url)
    try:
        registry = ModelRegistry(db, store)
        runs = RunStore(db)
        run = runs.start_run(experiment="churn")
        version = registry.commit_version("churn", stage_model_dir(store, model_dir), lineage={"run_id": run.run_id})
        runs.finish_run(run.run_id, status="finished", artifacts={"model": version.ref})
        assert db.schema_version("registry") >= 1 and db.schema_version(COMPONENT) == 1
        # Both again on the same DB (an actor restart): migrations are not re-applied.
        ModelRegistry(db, store)
        again = RunStore(db)
        assert again.get_run(run.run_id).artifacts == {"model": "churn@1"}
        assert registry.get("churn@1").lineage.run_id == run.run_id
        assert db.integrity_check() == "ok"
    finally:
        db.close()


def test_a_runs_error_and_artifacts_are_stored_without_credentials(runs):
    run = runs.start_run(experiment="leaky")
    done = runs.finish_run(run.run_id, status="failed", artifacts={"model": "s3://u:hunter2@lake/m"},
                           error="could not reach postgresql://aiinfra:hunter2@db:5432/aiinfra: refused")
    stored = runs.get_run(run.run_id)
    assert "hunter2" not in done.error and "hunter2" not in stored.error and "db:5432" in stored.error
    assert "hunter2" not in stored.artifacts["model"]
