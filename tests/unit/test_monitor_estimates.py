"""The monitor service with a registered reference profile: estimates per window, checked against late labels.

No Ray: the service is the plain class the ``monitor:<model>`` actor hosts, over a real metadata DB
(SQLite, and Postgres in the store suite) and a local artifact store.
"""

from __future__ import annotations

import monitored
import numpy as np
import pandas as pd
import pytest

from aiinfra.errors import ArtifactCorrupted
from aiinfra.monitoring.profile import PROFILE, build_profile, write_profile
from aiinfra.monitoring.service import MonitorService
from aiinfra.registry.client import RegistryClient
from aiinfra.registry.core import ModelRegistry
from aiinfra.service import LocalBackend
from aiinfra.storage import open_artifact_store, open_metadata_db

pytestmark = pytest.mark.store

INPUTS = monitored.INPUTS
rows = monitored.rows


def test_each_window_carries_an_estimate_that_late_labels_then_check(config, registered):
    db, store, version = registered
    service = MonitorService(config, "m", db=db, store=store, ticker=False)
    status = service.status()
    assert status["reference"] == "the holdout split of d@1" and status["detector"]["backend"] == "scipy"
    assert status["estimation"]["available"] and status["estimation"]["reliable"]

    rng = np.random.default_rng(1)
    frame, p, labels = rows(rng, 1000, shift=0.8)  # covariate shift: the model is surer, so more often right
    ids = [f"r{i}" for i in range(1000)]
    closed = service.observe(frame.to_dict(orient="records"), p.tolist(), ids, [int(v >= 0.5) for v in p],
                             [version.version] * 1000)
    assert len(closed) == 1
    estimate = closed[0]["estimate"]
    assert estimate["reliable"] and estimate["rows"] == 1000
    realised = float(np.mean((p >= 0.5) == (labels == 1)))
    assert estimate["metrics"]["accuracy"]["value"] == pytest.approx(realised, abs=0.04)

    before = service.check_estimates()
    assert before[0].labelled == 0 and before[0].realised is None  # no label yet: the estimate stands alone
    service.feedback([{"request_id": rid, "label": int(y)} for rid, y in zip(ids[:600], labels[:600])])
    partly = service.check_estimates()[0]
    assert partly.labelled == 600 and partly.error["accuracy"] < 0.06

    service.feedback([{"request_id": rid, "label": int(y)} for rid, y in zip(ids[600:], labels[600:])])
    status = service.status()
    window = status["estimation"]["windows"][0]
    assert window["labelled"] == 1000 and window["realised"]["accuracy"] == pytest.approx(realised)
    assert status["estimation"]["error"] == {"metric": "accuracy", "windows": 1,
                                             "mae": pytest.approx(abs(estimate["metrics"]["accuracy"]["value"] - realised))}

    # A restarted monitor reads the stored profile (no re-scoring) and the stored checks.
    again = MonitorService(config, "m", db=db, store=store, ticker=False)
    assert again.status()["estimation"]["windows"][0]["labelled"] == 1000


def test_a_tampered_profile_is_refused_not_used(config, registered):
    db, store, version = registered
    key = f"{version.artifact_key}/{PROFILE}"
    store.write_bytes(key, store.read_bytes(key) + b"x")
    with pytest.raises(ArtifactCorrupted, match=PROFILE):
        MonitorService(config, "m", db=db, store=store, ticker=False)


def test_when_only_the_concept_changes_the_error_stream_finds_it_and_the_autopilot_retrains(config, registered):
    """Same inputs, same scores, but the label now follows the opposite relation: the input tests and CBPE
    stay quiet (they cannot see it), the error stream's ADWIN fires, and its report starts a retrain."""
    from aiinfra.autopilot import Autopilot

    db, store, version = registered
    service = MonitorService(config, "m", db=db, store=store, ticker=False)
    rng = np.random.default_rng(7)
    reports, found = [], []
    for batch in range(4):
        frame, p, labels = rows(rng, 1000)
        if batch >= 2:
            labels = (rng.random(1000) < 1 - p).astype(np.int64)  # the concept flips; the inputs do not
        ids = [f"b{batch}-{i}" for i in range(1000)]
        reports += service.observe(frame.to_dict(orient="records"), p.tolist(), ids, [int(v >= 0.5) for v in p],
                                   [version.version] * 1000)
        out = service.feedback([{"request_id": rid, "label": int(y)} for rid, y in zip(ids, labels)])
        found += out["concept_drift"]
        if batch < 2:
            assert out["concept_drift"] == [], "a false alarm before the change"
    # The inputs did not move: at alpha 0.05 a stationary window may false-alarm (5% each), no more than that.
    assert len(reports) == 4 and sum(bool(r["result"]["drifted_features"]) for r in reports) <= 1
    estimates = [r["estimate"]["metrics"]["accuracy"]["value"] for r in reports]
    assert max(estimates) - min(estimates) < 0.05  # CBPE assumes the concept holds: it cannot see this
    assert found and found[0]["after"] > found[0]["before"] + 0.1 and "ADWIN" in found[0]["reason"]
    assert found[0]["at_row"] - 2000 < 300  # found within a few hundred labelled rows of the change
    status = service.status()
    assert status["concept"]["reports"][0]["detection_id"] == found[-1]["detection_id"]
    assert status["concept"]["rows"] == 4000

    policy = {"model": "m", "retrain": {"training_config": "jobs/configs/churn.yaml"}}
    decision = Autopilot(db, policy).on_concept_drift(found[0])
    assert decision.action == "retrain" and decision.evidence["trigger"] == "concept_drift"


def test_predictions_waiting_for_labels_survive_a_restart_through_the_checkpoint(config, registered):
    db, store, version = registered
    service = MonitorService(config, "m", db=db, store=store, ticker=False)
    frame, p, labels = rows(np.random.default_rng(9), 300)
    ids = [f"k{i}" for i in range(300)]
    service.observe(frame.to_dict(orient="records"), p.tolist(), ids, [int(v >= 0.5) for v in p],
                    [version.version] * 300)
    assert service.feedback([{"request_id": "early", "label": 1}])["unknown"] == 1  # held for its prediction
    assert service.checkpoint() and not service.checkpoint()  # written once; nothing new since
    snap = service.performance_snapshot()
    assert snap["pending"] == 300 and snap["held"] == 1 and snap["pending_bytes"] > 300 * 100

    again = MonitorService(config, "m", db=db, store=store, ticker=False)  # the actor restarted
    assert again.restored == 301
    out = again.feedback([{"request_id": rid, "label": int(y)} for rid, y in zip(ids, labels)])
    assert out["matched"] == 300 and out["unknown"] == 0
    assert again.performance_snapshot()["pending"] == 0 and again.performance_snapshot()["pending_bytes"] == 0
    rows_back = again.labelled_rows()
    assert len(rows_back) == 300 and rows_back[0]["label"] == int(labels[0]) and "plan" in rows_back[0]
    # The error stream's detector goes on where it was after a restart, too.
    assert again.checkpoint() and again.concept.rows == 300
    third = MonitorService(config, "m", db=db, store=store, ticker=False)
    assert third.concept.rows == 300 and third.concept._adwin.width == 300

    # A checkpoint estimated to be costly (here: at a made-up second a byte) waits until its cost is at most
    # CHECKPOINT_SHARE of the time since the last one, the first one too; forced, it is written now.
    third.observe(frame.to_dict(orient="records"), p.tolist(), [f"z{i}" for i in range(300)],
                  [int(v >= 0.5) for v in p], [version.version] * 300)
    third._checkpoint_s_per_byte = 1.0
    assert not third.checkpoint() and third.checkpoint(force=True)

    # A damaged checkpoint is logged and skipped: the monitor starts without it rather than not at all.
    store.write_bytes("monitoring/m/intake.checkpoint", b"not gzip")
    assert MonitorService(config, "m", db=db, store=store, ticker=False).restored == 0


def test_the_pending_predictions_are_bounded_by_bytes_as_well():
    from aiinfra.monitoring.performance import PerformanceTracker

    tracker = PerformanceTracker("binary", [0, 1], {}, max_pending_bytes=200_000)
    wide = {f"f{i}": "x" * 100 for i in range(50)}  # about 10 KB a row
    tracker.record([f"r{i}" for i in range(100)], [0.5] * 100, rows=[wide] * 100)
    assert tracker.pending_bytes <= 200_000 and len(tracker._pending) < 30
    assert tracker.counts["forgotten"] == 100 - len(tracker._pending)


def test_monitor_status_reads_well_for_a_person(config, registered, capsys):
    """`aiinfra monitor status NAME` (without --json) on a real service's status: detector, estimates, windows."""
    from aiinfra.cli.monitoring import print_status

    db, store, version = registered
    service = MonitorService(config, "m", db=db, store=store, ticker=False)
    frame, p, labels = rows(np.random.default_rng(11), 1000)
    ids = [f"s{i}" for i in range(1000)]
    service.observe(frame.to_dict(orient="records"), p.tolist(), ids, [int(v >= 0.5) for v in p], [version.version] * 1000)
    service.feedback([{"request_id": rid, "label": int(y)} for rid, y in zip(ids, labels)])
    print_status("m", {**service.status(), "running": True})
    out = capsys.readouterr().out
    assert "detector: scipy (KS / chi-squared per input + MMD on all inputs)" in out and "licence" not in out
    assert "performance before labels (CBPE): calibration error" in out and "UNRELIABLE" not in out
    assert "estimation error: mean |estimated - realised| accuracy" in out and "over 1 window(s)" in out
    assert "concept drift (ADWIN on the error stream, 1,000 labelled rows): none found" in out
    assert "window    1" in out and "est. accuracy" in out
    print_status("m", {"model": "m", "running": False, "reports": []})
    assert "no windows yet" in capsys.readouterr().out


def test_monitor_status_says_when_windows_sample_and_the_monitor_is_sharded(config, registered, capsys):
    from aiinfra.cli.monitoring import print_status

    db, store, version = registered
    settings = config.monitoring.model_copy(update={"min_window_seconds": 30.0, "shards": 2})
    service = MonitorService(config.model_copy(update={"monitoring": settings}), "m", db=db, store=store, ticker=False)
    frame, p, _ = rows(np.random.default_rng(12), 3000)
    service.observe(frame.to_dict(orient="records"), p.tolist(), [f"t{i}" for i in range(3000)])
    report = service.flush()
    assert report["rows"] == 1000 and report["rows_seen"] == 3000
    print_status("m", {**service.status(), "running": True})
    out = capsys.readouterr().out
    assert "windows: at most one per 30 s, each testing a sample of 1,000 of its rows (2,000 rows outside" in out
    assert "shards: 2 actors" in out and "1000 rows of 3,000" in out


def test_a_multiclass_window_with_every_class_probability_estimates_macro_f1_checked_by_labels(config, tmp_path):
    """The replicas ship a multiclass model's every class's probability; the window's estimate then has macro F1
    and ROC-AUC beside accuracy, and the labels check accuracy and macro F1."""
    db = open_metadata_db(config.metadata_url, create=True)
    store = open_artifact_store(config.storage_root)
    registry = RegistryClient(LocalBackend(ModelRegistry(db, store)), store)
    rng = np.random.default_rng(2)
    classes = ["cat", "dog", "eel"]

    def scored(n: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        frame = pd.DataFrame({"x": rng.normal(0, 1, n), "plan": rng.choice(["basic", "premium"], n)})
        logits = np.column_stack([2 * frame["x"], -2 * frame["x"], np.zeros(n)]) + rng.normal(0, 0.5, (n, 3))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return frame, p, (rng.random((n, 1)) > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)

    frame, p, truth = scored(4000)
    model_dir = tmp_path / "mc"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"-")
    write_profile(build_profile(frame, INPUTS, task="multiclass", class_labels=classes, outputs=p, labels=truth,
                                source="holdout"), model_dir)
    version = registry.register("mc", model_dir, metrics={"accuracy": 0.7},
                                signature={"inputs": [f.model_dump() for f in INPUTS],
                                           "outputs": [{"name": "label", "dtype": "string"}]},
                                lineage={"dataset_version": "d@1"})
    try:
        service = MonitorService(config, "mc", db=db, store=store, ticker=False)
        frame, p, truth = scored(1000)
        ids = [f"q{i}" for i in range(1000)]
        predicted = [classes[k] for k in p.argmax(axis=1)]
        closed = service.observe(frame.to_dict(orient="records"), p.max(axis=1).tolist(), ids, predicted,
                                 [version.version] * 1000, probabilities=p)
        metrics = closed[0]["estimate"]["metrics"]
        assert set(metrics) == {"accuracy", "f1_macro", "roc_auc_macro"}
        service.feedback([{"request_id": r, "label": classes[k]} for r, k in zip(ids, truth)])
        check = service.check_estimates()[0]
        assert set(check.error) == {"accuracy", "f1_macro"}  # ROC-AUC needs probabilities the labels do not keep
        assert check.error["accuracy"] < 0.04 and check.error["f1_macro"] < 0.05
        # Without the probabilities (an older replica), the top class's probability gives accuracy alone.
        frame, p, _ = scored(1000)
        closed = service.observe(frame.to_dict(orient="records"), p.max(axis=1).tolist(), [f"s{i}" for i in range(1000)],
                                 [classes[k] for k in p.argmax(axis=1)], [version.version] * 1000)
        assert set(closed[0]["estimate"]["metrics"]) == {"accuracy"}
    finally:
        db.close()
