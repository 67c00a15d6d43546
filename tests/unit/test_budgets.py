"""The training driver's memory, estimated from a version's manifest, and the refusal past its budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aiinfra.data.profile import ColumnProfile, DatasetProfile
from aiinfra.demo.configs import example_config
from aiinfra.errors import InvalidInput
from aiinfra.training.budgets import (
    PROCESS_BYTES,
    check_driver_budget,
    driver_memory_request,
    retrain_driver_estimate,
    row_bytes,
    training_driver_estimate,
)
from aiinfra.training.config import load_train_config


def _version(rows: int) -> SimpleNamespace:
    """A manifest's fields as the estimate reads them: the demo's customers (5 numbers, a timestamp, 2 texts)."""
    schema = [{"name": n, "type": t} for n, t in [
        ("customer_id", "int64"), ("event_ts", "timestamp[ns]"), ("tenure_months", "double"),
        ("monthly_charges", "double"), ("support_calls", "int64"), ("plan", "string"), ("region", "string"),
        ("churned", "int64")]]
    text = ColumnProfile(type="string", count=rows, nulls=0, top=[("basic", 3), ("premium", 1)])  # mean 5.5 chars
    profile = DatasetProfile(row_count=rows, sample_rows=0, columns={"plan": text, "region": text})
    return SimpleNamespace(row_count=rows, schema_=schema, profile=profile, ref=f"customers@{rows:x}")


def test_a_row_counts_eight_bytes_a_number_and_a_python_object_a_text():
    assert row_bytes(_version(10)) == 6 * 8 + 2 * (57 + 5.5)


def test_the_in_memory_engine_holds_the_table_four_times_and_the_ray_engine_its_holdout():
    cfg = load_train_config(example_config("churn.yaml"))
    rows = 12_000_000
    table = rows * row_bytes(_version(rows))
    memory = training_driver_estimate(cfg, _version(rows), engine="memory")
    assert memory.bytes == int(PROCESS_BYTES + 4 * table)
    ray = training_driver_estimate(cfg, _version(rows), engine="ray")
    assert ray.bytes == int(PROCESS_BYTES + 2 * table * cfg.data.split.holdout_fraction) < memory.bytes
    joined = training_driver_estimate(cfg, _version(rows), source=_version(rows), engine="memory")
    assert joined.bytes == int(PROCESS_BYTES + 6 * table)


def test_a_job_past_its_budget_is_refused_before_it_is_sent_with_what_to_change():
    cfg = load_train_config(example_config("churn.yaml"))
    estimate = training_driver_estimate(cfg, _version(12_000_000), engine="memory")
    with pytest.raises(InvalidInput, match=r"training churn: its driver would hold about 8\.\d\d GiB .* more than its "
                                           r"budget of 8\.00 GiB .*set data.engine: ray"):
        check_driver_budget(estimate, 8 << 30, "training churn")
    check_driver_budget(estimate, 0, "training churn")  # no budget: nothing to refuse
    check_driver_budget(training_driver_estimate(cfg, _version(12_000_000), engine="ray"), 8 << 30, "training churn")


def test_without_a_budget_the_job_asks_for_its_estimate_and_one_no_node_could_hold_is_refused():
    cfg = load_train_config(example_config("churn.yaml"))
    small = training_driver_estimate(cfg, _version(10_000), engine="memory")
    nodes = [4 << 30, 6 << 30]  # each alive node's memory for tasks
    assert driver_memory_request(small, 0, nodes, "training churn") == small.bytes
    assert driver_memory_request(small, 8 << 30, nodes, "training churn") is None  # the configured budget is asked for
    assert driver_memory_request(None, 0, nodes, "training churn") is None  # no estimate (manifests not readable)
    assert driver_memory_request(small, 0, [], "training churn") is None  # nodes not known: no request
    big = training_driver_estimate(cfg, _version(12_000_000), engine="memory")
    with pytest.raises(InvalidInput, match=r"more than any node of the cluster has for tasks \(the largest: 6\.00 GiB\); "
                                           r"set data.engine: ray"):
        driver_memory_request(big, 0, nodes, "training churn")


def test_a_retrain_holds_its_dataset_twice_and_trains_on_the_window_it_makes():
    cfg = load_train_config(example_config("churn.yaml"))
    base = _version(2_000_000)
    table = 2_000_000 * row_bytes(base)
    everything = retrain_driver_estimate(cfg, base, recent_rows=5_000, reference_rows=None, engine="memory")
    window = training_driver_estimate(cfg, _version(2_005_000), engine="memory")
    assert everything.bytes == int(window.bytes + 2 * table) and "a window of 2,005,000" in everything.detail
    newest = retrain_driver_estimate(cfg, base, recent_rows=5_000, reference_rows=500, engine="memory")
    assert newest.bytes == int(training_driver_estimate(cfg, _version(5_500), engine="memory").bytes + 2 * table)
    with pytest.raises(InvalidInput, match="the retrain of churn: its driver would hold"):
        check_driver_budget(everything, 1 << 30, "the retrain of churn")
