"""Training on a real Ray cluster: DDP averaging, resume after a killed worker, ASHA, the pipeline, reproduce."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiinfra.data.spec import load_spec
from aiinfra.data.synthetic import LABEL, make_customers
from aiinfra.data.transforms import fit_features, load_feature_spec
from aiinfra.demo.configs import example_config
from aiinfra.training.config import TrainConfig
from aiinfra.training.ray_train import PreparedData, fit

pytestmark = pytest.mark.timeout(600)

FEATURES = load_feature_spec(example_config("customers_features.yaml"))


def _config(**trainer) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "ddp-test", "task": "binary",
        "data": {"dataset": "customers", "label": LABEL, "features": FEATURES},
        "model": {"family": "tabular_mlp", "params": {"hidden": [8]}},
        "trainer": {"seed": 3, "patience": None, **trainer},
    })


def _prepared(rows: int, *, val: int = 0) -> PreparedData:
    df = make_customers(rows + val, seed=5)
    pre = fit_features(df, FEATURES)
    return PreparedData(train=df.iloc[:rows].reset_index(drop=True), val=df.iloc[rows:].reset_index(drop=True), pre=pre,
                        label=LABEL, task="binary", class_labels=[0, 1])


def _run_name(what: str) -> str:
    return f"test-{what}-{uuid.uuid4().hex[:8]}"


def _worker_killer(run_dir: Path, killed: dict[str, object], *, settle_s: float, poll_s: float) -> threading.Thread:
    """A thread that SIGKILLs one Ray Train worker once ``run_dir`` holds a checkpoint (and ``settle_s`` more),
    recording its pid in ``killed``."""

    import psutil

    def kill() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if run_dir.exists() and any(p.name.startswith("checkpoint_") for p in run_dir.iterdir()):
                time.sleep(settle_s)
                # Ray names a worker process after its actor class: "ray::RayTrainWorker...".
                workers = [p for p in psutil.process_iter(["cmdline"])
                           if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")]
                if workers:
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    killed["pid"] = workers[-1].pid
                    return
            time.sleep(poll_s)

    return threading.Thread(target=kill, daemon=True)


@pytest.mark.parametrize("two_workers", ["cached", "streamed"])
def test_two_worker_ddp_matches_one_worker_on_the_same_global_batch(platform_config, two_workers):
    """Full-batch SGD: one worker on N rows must equal two workers on N/2 rows each, step for step,
    only if DDP really averages the two gradients (without it, each rank would step on half the data).
    The two workers either cache their shards or (a budget of 1 byte) stream them from Ray Data every epoch:
    the same steps either way."""
    n = 1000
    data = _prepared(n)
    root = platform_config.storage_root
    one = fit(_config(num_workers=1, batch_size=n, epochs=4, optimizer="sgd", lr=0.5, shuffle=False), data,
              storage_root=root, run_name=_run_name("ddp1"))
    budget = {"cached": {}, "streamed": {"shard_cache_bytes": 1}}[two_workers]
    two = fit(_config(num_workers=2, batch_size=n // 2, epochs=4, optimizer="sgd", lr=0.5, shuffle=False, **budget), data,
              storage_root=root, run_name=_run_name("ddp2"))
    assert [h["world_size"] for h in two.history] == [2] * 4
    assert [h["shard_cached"] for h in two.history] == [int(two_workers == "cached")] * 4
    assert [h["shard_cached"] for h in one.history] == [1] * 4  # 1,000 rows fit the default budget
    np.testing.assert_allclose([h["train_loss"] for h in one.history], [h["train_loss"] for h in two.history], atol=1e-5)
    assert one.history[-1]["train_loss"] < one.history[0]["train_loss"]  # it did learn
    for name, w in one.best_state.items():
        np.testing.assert_allclose(w.numpy(), two.best_state[name].numpy(), atol=1e-5, err_msg=name)


def test_a_killed_worker_resumes_from_the_last_checkpoint_not_from_epoch_0(platform, platform_config):
    """The restarted workers load the last checkpoint only after the registry confirms the run wrote it."""

    epochs = 30
    data = _prepared(3000)
    run = _run_name("resume")
    run_dir = Path(platform_config.storage_root) / "checkpoints" / run
    killed: dict[str, object] = {}
    killer = _worker_killer(run_dir, killed, settle_s=2.0, poll_s=0.2)  # a few more epochs: the kill lands mid-run
    killer.start()
    result = fit(_config(num_workers=2, batch_size=32, epochs=epochs, max_failures=2), data,
                 storage_root=platform_config.storage_root, run_name=run, records_namespace=platform_config.namespace)
    killer.join(timeout=5)
    assert killed, "the test did not get to kill a worker"
    history = result.history
    assert [h["epoch"] for h in history] == list(range(epochs))  # every epoch exactly once
    starts = sorted({h["start_epoch"] for h in history})
    assert starts[0] == 0 and len(starts) == 2, starts  # one restart ...
    assert starts[1] > 0  # ... that began after the last checkpointed epoch, not at epoch 0
    _a_changed_checkpoint_is_refused(platform, platform_config, run, result.checkpoint_path)


def _a_changed_checkpoint_is_refused(platform, platform_config, run: str, path: str) -> None:
    from aiinfra.errors import ArtifactCorrupted
    from aiinfra.training.checkpoint_ledger import CheckpointRecords, checkpoint_digest
    from aiinfra.training.ray_train import load_checkpoint_at

    records = CheckpointRecords(namespace=platform_config.namespace, run=run)
    assert platform.registry._backend.call("checkpoint_recorded", run, checkpoint_digest(path))
    load_checkpoint_at(path, platform_config.storage_root, checkpoints=records)  # as written: loads
    weights = next(p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".ubj", ".json", ".txt")
                   and not p.name.startswith("."))
    weights.write_bytes(weights.read_bytes() + b" ")  # changed in storage after the run
    with pytest.raises(ArtifactCorrupted, match="not one the run wrote"):
        load_checkpoint_at(path, platform_config.storage_root, checkpoints=records)
    with pytest.raises(ArtifactCorrupted):  # nor is it another run's
        load_checkpoint_at(path, platform_config.storage_root, checkpoints=records.model_copy(update={"run": "other"}))


@pytest.fixture(scope="module")
def customers(platform, platform_config):
    from aiinfra.pipelines.ingest import ingest

    tmp = Path(platform_config.home) / "raw"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "customers-train.csv"
    make_customers(3000, seed=11).to_csv(path, index=False)
    return ingest(platform_config, "customers", str(path), spec=load_spec(example_config("customers_spec.yaml"))).version


def _pipeline_config(name: str, **extra) -> dict:
    return {
        "name": name, "task": "binary",
        "data": {
            "dataset": "customers", "label": LABEL, "features": FEATURES, "label_delay_s": 3600,
            "feature_view": {"name": "customer_profile", "entity": "customer_id", "timestamp": "event_ts",
                             "features": ["tenure_months", "monthly_charges", "support_calls", "plan", "region"],
                             "source": "customers"},
            "slices": ["plan"],
        },
        "model": {"family": "tabular_mlp", "params": {"hidden": [16]}},
        "trainer": {"num_workers": 2, "epochs": 3, "batch_size": 128, "seed": 1, "patience": None},
        **extra,
    }


def test_tune_with_asha_stops_a_trial_early_and_the_pipeline_registers_full_lineage(platform, customers):
    from aiinfra.pipelines.train import TRAINING_CONFIG, run_training
    from aiinfra.training.config import load_train_config

    # The hopeless learning rate comes third: two good trials have reached ASHA's rungs by the time it does, so
    # it is measured against them and stopped. (Listed first, it could reach each rung before anything to be
    # compared with, and finish: whether it was stopped then hung on which trial's epoch ended first.)
    cfg = load_train_config(_pipeline_config("churn-tuned", tune={
        "search_space": {"trainer.lr": {"grid": [0.05, 0.02, 1e-5, 0.01]}},
        "num_samples": 1, "max_concurrent_trials": 2, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2,
    }))
    outcome = run_training(platform, cfg)

    statuses = [t["status"] for t in outcome.trials]
    assert len(statuses) == 4 and "stopped" in statuses, outcome.trials  # ASHA ended at least one trial early
    assert outcome.config.trainer.lr != 1e-5  # the hopeless learning rate did not win
    run = platform.registry.get_run(outcome.run_id)
    assert run.kind == "tune" and run.status == "finished"
    assert run.dataset_versions == [customers.ref]
    assert run.code_version["version"] and run.config_hash and run.seed == 1
    assert run.epochs and run.cpu_seconds > 0
    trials = platform.registry.list_runs(parent_run_id=outcome.run_id)
    assert sorted(t.status for t in trials) == sorted(statuses)
    assert all(t.epochs == [] for t in trials)  # listings stay light; get_run has the epochs
    assert platform.registry.get_run(trials[0].run_id).epochs

    version = platform.registry.get(outcome.model)
    assert version.lineage.run_id == outcome.run_id
    assert version.lineage.dataset_version == customers.ref
    assert version.lineage.feature_view == "customer_profile"
    assert version.metrics["roc_auc"] > 0.6 and "ece" in version.metrics
    assert outcome.alias == "champion"  # the first model of its name
    assert {TRAINING_CONFIG, "evaluation.json", "evaluation.html"} <= set(version.files)
    assert "plan" in pd.read_json(platform.store.path(f"reports/{outcome.run_id}/evaluation.json"), typ="series")["slices"]


@pytest.fixture(scope="module")
def gated(platform, customers):
    """``churn-gated@1``, trained once for the module: the champion the gate, batch inference and the monitor
    tests use, so each of them passes alone and in any order."""
    from aiinfra.pipelines.train import run_training
    from aiinfra.training.config import load_train_config

    first = run_training(platform, load_train_config(_pipeline_config("churn-gated")))
    assert first.alias == "champion"
    return first


def test_a_second_model_meets_the_gate_and_reproduce_matches(platform, customers, gated):
    from aiinfra.pipelines.train import reproduce, run_training
    from aiinfra.training.config import load_train_config

    first = gated
    # A model that cannot be better: a learning rate too small to leave its random start.
    weak = load_train_config(_pipeline_config("churn-gated", trainer={"num_workers": 2, "epochs": 1, "lr": 1e-6, "seed": 9,
                                                                    "patience": None}))
    second = run_training(platform, weak)
    assert second.verdict is not None and not second.verdict["passed"], second.verdict
    assert "champion churn-gated@1" in second.verdict["reason"]
    assert second.alias is None  # registered, but not made challenger
    assert platform.registry.get("churn-gated@champion").version == 1

    result = reproduce(platform, first.model)
    assert result["original_run_id"] == first.run_id
    assert result["config_hash"] == result["original_config_hash"]
    assert result["within_tolerance"], result
    child = platform.registry.get_run(result["run_id"])
    assert child.kind == "reproduce" and child.parent_run_id == first.run_id


def customers_frame_with_a_null(frame: pd.DataFrame, column: str, row: int) -> pd.DataFrame:
    out = frame.head(5).copy()
    out[column] = out[column].astype("float64")
    out.loc[out.index[row], column] = np.nan
    return out


def test_batch_inference_gives_the_online_answers_and_versions_them_with_lineage(platform, customers, gated):
    """Batch (Ray Data, actor pool) and online (the Predictor the Serve deployment runs) agree row by row."""
    from aiinfra.inference.predictor import Predictor
    from aiinfra.pipelines.batch_predict import batch_predict

    version = platform.registry.get("churn-gated@champion")
    result = batch_predict(platform, version.ref, customers.ref, output="customers_scored")
    catalog = platform.datasets
    out = catalog.get(result["output"])
    assert out.row_count == customers.row_count
    assert out.lineage["model"] == version.ref and out.lineage["input_dataset"] == customers.ref
    scored = catalog.load(out).to_pandas().sort_values("customer_id").reset_index(drop=True)
    assert set(scored["model_version"]) == {version.version}

    local = platform.registry.download(version, Path(platform.config.home) / "online-check")
    online = Predictor(version, local)
    features = [f.name for f in version.signature.inputs]
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in scored[features].to_dict("records")]
    answers = online.predict(rows)
    assert [a["label"] for a in answers] == scored["prediction"].tolist()
    np.testing.assert_allclose([a["probability"] for a in answers], scored["probability"].to_numpy(), atol=1e-9)

    from aiinfra.errors import InvalidInput
    from aiinfra.pipelines.ingest import ingest

    # Partitioned by a column: a file per plan in each actor's batch, under plan=<value>/, the same rows.
    by_plan = catalog.get(batch_predict(platform, version.ref, customers.ref, output="customers_scored",
                                        partition_by=["plan"])["output"])
    assert by_plan.partition_by == ["plan"] and by_plan.version != out.version
    assert {rel.split("/")[0] for rel in by_plan.files if not rel.startswith("_")} == {f"plan={p}" for p in set(scored["plan"])}
    again = catalog.load(by_plan).to_pandas().sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(again[list(scored.columns)], scored)
    with pytest.raises(InvalidInput, match="cannot partition by 'probability': its type is double"):
        batch_predict(platform, version.ref, customers.ref, partition_by=["probability"])

    with pytest.raises(InvalidInput, match="lacks the input column"):
        platform.store.write_bytes("raw/x.csv", b"customer_id,event_ts\n1,2026-01-01T00:00:00\n")
        bare = ingest(platform.config, "bare", platform.store.path("raw/x.csv")).version
        batch_predict(platform, version.ref, bare.ref)

    # A gap where the model imputes (monthly_charges) is scored as online scores a null there; a null where it
    # does not (tenure_months) stops the job with the HTTP API's words for it, and no version of the output appears.
    gap = customers_frame_with_a_null(scored[features], "monthly_charges", row=2)
    platform.store.write_bytes("raw/gap.csv", gap.to_csv(index=False).encode())
    gappy = ingest(platform.config, "gappy", platform.store.path("raw/gap.csv")).version
    filled = catalog.load(catalog.get(batch_predict(platform, version.ref, gappy.ref, pool_size=1)["output"])).to_pandas()
    row = {k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in gap.iloc[2].items()}
    assert filled["probability"].iloc[2] == online.predict([row])[0]["probability"]
    bad = customers_frame_with_a_null(scored[features], "tenure_months", row=2)
    platform.store.write_bytes("raw/bad.csv", bad.to_csv(index=False).encode())
    holey = ingest(platform.config, "holey", platform.store.path("raw/bad.csv")).version
    with pytest.raises(InvalidInput, match=r"holey@\w+ scored by churn-gated@\d+: invalid input: "
                                           r"instances\[2\]\.tenure_months: must not be null"):
        batch_predict(platform, version.ref, holey.ref, output="holey_scored", pool_size=1)
    assert catalog.versions("holey_scored") == []


def test_the_drift_monitor_actor_flags_shifted_traffic_and_survives_a_restart(platform, platform_config, customers,
                                                                               gated):
    """`monitor:<model>`: reference from the champion's training data; a window of shifted traffic is
    flagged naming the shifted feature; after the actor is killed and restarted the reports are still there."""
    import ray

    from aiinfra.monitoring.actor import get_monitor_actor

    features = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    fresh = make_customers(1000, seed=23)[features]
    shifted = fresh.copy()
    shifted["support_calls"] = shifted["support_calls"] + 3
    handle = get_monitor_actor(platform_config, "churn-gated")
    try:
        status = ray.get(handle.status.remote(), timeout=120)
        # The reference profile registered with the version: its holdout rows, labels and scores.
        assert customers.ref in status["reference"] and "plan" in status["features"]["categorical"]
        assert status["detector"]["backend"] == "scipy" and status["detector"]["licence"] is None
        estimation = status["estimation"]
        assert estimation["available"] and estimation["calibration_error"] < 0.1, estimation
        window = status["settings"]["window_rows"]
        assert window == 1000

        def records(frame):
            return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame.to_dict("records")]

        ray.get(handle.observe.remote(records(fresh)), timeout=60)
        closed = ray.get(handle.observe.remote(records(shifted)), timeout=60)
        assert len(closed) == 1 and closed[0]["status"] == "drift", closed
        assert "support_calls" in closed[0]["result"]["drifted_features"]
        assert "plan" not in closed[0]["result"]["drifted_features"]

        # a canary's arms: 5 requests answered by the served version, 2 failures
        served_version = str(ray.get(handle.performance_snapshot.remote(), timeout=60)["version"])
        ray.get(handle.reset_arms.remote(), timeout=60)
        ray.get(handle.observe.remote(records(fresh.head(5)), [0.4] * 5, [f"arm-{i}" for i in range(5)], [0] * 5,
                                      [int(served_version)] * 5, {int(served_version): 2}), timeout=60)
        arms = ray.get(handle.arm_stats.remote(), timeout=60)
        assert arms["arms"][served_version] == {"requests": 5, "errors": 2, "labelled": 0, "correct": 0}

        pid = ray.get(handle.pid.remote())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            try:
                after = ray.get(handle.status.remote(), timeout=60)
                break
            except ray.exceptions.RayActorError:
                assert time.monotonic() < deadline, "the monitor did not come back"
                time.sleep(1)
        assert ray.get(handle.pid.remote()) != pid
        ids = [r["window_id"] for r in after["reports"]]
        assert closed[0]["window_id"] in ids  # an acknowledged report survives the restart
        assert ray.get(handle.arm_stats.remote(), timeout=60) == arms  # and so does the canary's count
    finally:
        ray.kill(handle, no_restart=True)


# -- the tree families -------------------------------------------------------------------------------
def _tree_config(family: str, **params) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "trees-test", "task": "binary",
        "data": {"dataset": "customers", "label": LABEL, "features": FEATURES},
        "model": {"family": family, "params": params},
        "trainer": {"num_workers": 2, "seed": 3, "max_failures": 2},
    })


def test_a_killed_tree_worker_resumes_from_the_last_checkpointed_round_not_from_round_0(platform, platform_config):

    rounds = 60
    data = _prepared(4000, val=500)
    run = _run_name("tree-resume")
    run_dir = Path(platform_config.storage_root) / "checkpoints" / run
    killed: dict[str, object] = {}
    # The checkpoint registered with the controller, and a few more rounds.
    killer = _worker_killer(run_dir, killed, settle_s=1.0, poll_s=0.05)
    killer.start()
    cfg = _tree_config("xgboost", num_boost_round=rounds, early_stopping_rounds=None, checkpoint_every=3,
                       learning_rate=0.05, max_depth=4)
    result = fit(cfg, data, storage_root=platform_config.storage_root, run_name=run,
                 records_namespace=platform_config.namespace)
    killer.join(timeout=5)
    assert killed, "the test did not get to kill a worker"
    history = result.history
    assert [h["epoch"] for h in history] == list(range(rounds))  # every round exactly once
    starts = sorted({h["start_epoch"] for h in history})
    assert starts[0] == 0 and len(starts) == 2 and starts[1] > 0 and starts[1] % 3 == 0, starts  # from a checkpoint
    assert all(h["world_size"] == 2 for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    from aiinfra.training.runtimes import tree_model_from_bytes

    # Without early stopping every round's trees are kept, those from before the failure too.
    assert tree_model_from_bytes("xgboost", result.best_state).num_boosted_rounds() == rounds
    _a_changed_checkpoint_is_refused(platform, platform_config, run, result.checkpoint_path)


def test_a_lightgbm_search_registers_its_best_trial_and_an_xgboost_rival_is_gated_against_it(platform, customers):
    """Trees through the whole pipeline: Tune over a tree hyperparameter, evaluation, register with lineage,
    the gate across families on the same holdout rows, and the registered version served as trained."""
    from aiinfra.inference.predictor import Predictor
    from aiinfra.pipelines.train import TRAINING_CONFIG, run_training
    from aiinfra.training.config import load_train_config

    trees = {"num_boost_round": 60, "early_stopping_rounds": 10, "checkpoint_every": 10, "learning_rate": 0.1}
    cfg = load_train_config(_pipeline_config("churn-trees", model={"family": "lightgbm", "params": trees}, tune={
        "search_space": {"model.params.num_leaves": {"grid": [4, 15]}},
        "num_samples": 1, "max_concurrent_trials": 2, "scheduler": "fifo",
    }))
    first = run_training(platform, cfg)
    assert len(first.trials) == 2 and {t["status"] for t in first.trials} <= {"finished", "stopped"}, first.trials
    assert first.config.model.params["num_leaves"] in (4, 15) and first.config.tune is None
    assert first.alias == "champion"
    version = platform.registry.get(first.model)
    assert "model.txt" in version.files and "weights.safetensors" not in version.files
    assert version.params["family"] == "lightgbm" and version.metrics["roc_auc"] > 0.65
    assert version.lineage.run_id == first.run_id and version.lineage.dataset_version == customers.ref
    run = platform.registry.get_run(first.run_id)
    assert run.kind == "tune" and [e.step for e in run.epochs] == list(range(len(run.epochs)))  # one per boosting round
    assert len(run.epochs) > 6

    # Served as trained: the registered files, loaded by the Predictor a Serve replica runs.
    local = platform.registry.download(version, Path(platform.config.home) / "trees-download")
    predictor = Predictor(version, local)
    rows = [{"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"},
            {"tenure_months": 70.0, "monthly_charges": 20.0, "support_calls": 0, "plan": "premium", "region": "south"}]
    answers = predictor.predict(rows)
    assert answers[0]["label"] == 1 and answers[1]["label"] == 0, answers

    # XGBoost stopped after 3 rounds cannot beat the champion: registered, refused by the gate, no alias. Its
    # transforms are inferred (features: auto), and the resolved config it is registered with names them.
    raw = _pipeline_config("churn-trees", model={"family": "xgboost", "params": {
        "num_boost_round": 3, "learning_rate": 0.01, "max_depth": 1, "checkpoint_every": 3}})
    raw["data"]["features"] = "auto"
    second = run_training(platform, load_train_config(raw))
    assert second.verdict is not None and not second.verdict["passed"], second.verdict
    assert "champion churn-trees@1" in second.verdict["reason"] and second.alias is None
    rival = platform.registry.get(second.model)
    assert "model.ubj" in rival.files
    inferred = {f.column: [s.op for s in f.steps] for f in second.config.data.features.features}
    # the view's features and the slice column; not the entity (the dataset's key), the label or its join time
    assert inferred == {"tenure_months": ["impute"], "monthly_charges": ["impute"], "support_calls": ["impute"],
                        "plan": ["one_hot"], "region": ["one_hot"]}, inferred
    recipe = json.loads((platform.registry.download(rival, Path(platform.config.home) / "rival") / TRAINING_CONFIG).read_text())
    assert [f["column"] for f in recipe["data"]["features"]["features"]] == list(inferred)
