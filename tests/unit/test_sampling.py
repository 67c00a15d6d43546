"""The serving side of monitoring: sampling never blocks or fails a response, and drops are counted."""

from __future__ import annotations

import threading
import time

import numpy as np

from aiinfra.inference.columns import Columns, Runs
from aiinfra.serving.sampling import MonitorSampler


def test_rows_are_shipped_in_batches_with_their_scores_and_request_ids():
    shipped = []
    sampler = MonitorSampler(lambda *batch: shipped.append(batch), start=False)
    sampler.offer([{"a": 1}, {"a": 2}], [0.1, 0.9], "r1", ["no", "yes"], version=1)
    sampler.offer([{"a": 3}], [0.5], "r2", version=2)
    sampler.offer_error(2)
    sampler.offer_error(2)
    assert sampler.flush() == 3
    [(rows, scores, ids, labels, versions, errors, tokens)] = shipped
    # Rows column by column, scores as one array, and what is per request once per request (Runs).
    assert isinstance(rows, Columns) and rows == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert isinstance(scores, np.ndarray) and scores.tolist() == [0.1, 0.9, 0.5]
    assert isinstance(ids, Runs) and ids.values == ["r1", "r2"] and ids == ["r1", "r1", "r2"]
    assert labels == ["no", "yes", None] and versions == [1, 1, 2] and errors == {2: 2}
    assert tokens == [None, None, None]
    assert sampler.flush() == 0 and sampler.counts["sent"] == 3
    sampler.offer_error(1)  # errors alone are shipped too, with no rows
    sampler.flush()
    rows, scores, ids, labels, versions, errors, tokens = shipped[-1]
    assert len(rows) == len(scores) == len(ids) == len(versions) == len(tokens) == 0 and errors == {1: 1}


def test_requests_shipped_as_columns_stay_columns_and_whole():
    from aiinfra.inference.columns import to_columns

    shipped = []
    sampler = MonitorSampler(lambda *batch: shipped.append(batch), max_rows_per_send=4, start=False)
    sampler.offer(to_columns([{"x": 1.0, "c": "a"}, {"x": 2.0, "c": "b"}]), [0.1, 0.2], "r1", [0, 1], 3, "tok")
    sampler.offer(to_columns([{"x": 3.0, "c": "c"}] * 3), [0.3] * 3, "r2", [1, 1, 1], 3, "tok")
    assert sampler.flush() == 2  # r2 would make 5 rows: a request is never split across shipments
    assert sampler.flush() == 3
    rows, _, ids, labels, _, _, tokens = shipped[0]
    assert isinstance(rows, Columns) and isinstance(rows.columns["x"], np.ndarray) and rows.columns["c"] == ["a", "b"]
    assert isinstance(labels, np.ndarray) and labels.tolist() == [0, 1]
    assert ids == ["r1", "r1"] and tokens.values == ["tok"]


def test_a_full_buffer_drops_and_counts_instead_of_growing():
    sampler = MonitorSampler(lambda *a: None, capacity=5, start=False)
    sampler.offer([{"a": i} for i in range(4)], [0.0] * 4, "r1")
    sampler.offer([{"a": i} for i in range(4)], [0.0] * 4, "r2")
    assert sampler.counts["sampled"] == 5 and sampler.counts["dropped"] == 3
    assert sampler.flush() == 5


def test_wide_rows_hit_the_byte_bound_before_the_row_bound_and_say_so():
    wide = {f"feature_{i}": "x" * 100 for i in range(50)}  # about 10 KB a row
    sampler = MonitorSampler(lambda *a: None, capacity=1000, max_bytes=100_000, start=False)
    sampler.offer([wide] * 20, [0.0] * 20, "r1")
    stats = sampler.stats()
    assert 5 <= stats["sampled"] < 20 and stats["dropped"] == 20 - stats["sampled"]
    assert stats["dropped_bytes"] == stats["dropped"] and stats["buffered_bytes"] <= 100_000
    assert sampler.flush() == stats["sampled"] and sampler.stats()["buffered_bytes"] == 0
    sampler.offer([wide], [0.0], "r2")  # room again once shipped
    assert sampler.stats()["buffered_rows"] == 1


def test_a_failing_monitor_costs_the_caller_nothing():
    def broken(*args):
        raise ConnectionError("monitor down")

    sampler = MonitorSampler(broken, start=False)
    sampler.offer([{"a": 1}], [0.2], "r1")  # does not raise
    assert sampler.flush() == 1
    assert sampler.counts["send_errors"] == 1 and sampler.counts["sent"] == 0


def test_offer_does_not_wait_for_a_slow_monitor():
    release = threading.Event()
    sampler = MonitorSampler(lambda *a: release.wait(5), interval_s=0.01)
    try:
        sampler.offer([{"a": 1}], [0.2], "r1")
        time.sleep(0.1)  # the thread is now blocked inside send
        t0 = time.perf_counter()
        for i in range(1000):
            sampler.offer([{"a": i}], [0.5], f"r{i}")
        assert time.perf_counter() - t0 < 0.5
    finally:
        release.set()
        sampler.close()


def test_sampling_rate_keeps_about_that_share():
    sampler = MonitorSampler(lambda *a: None, rate=0.25, capacity=100_000, start=False)
    for i in range(4000):
        sampler.offer([{"a": i}], [0.5], f"r{i}")
    assert 800 <= sampler.counts["sampled"] <= 1200


def test_a_multiclass_models_class_probabilities_are_shipped_as_one_array():
    shipped = []
    sampler = MonitorSampler(lambda *batch, **kw: shipped.append(kw), start=False)
    sampler.offer([{"a": 1}, {"a": 2}], [0.7, 0.6], "r1", ["x", "y"], 1, probabilities=[[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]])
    sampler.offer([{"a": 3}], [0.5], "r2", ["z"], 1, probabilities=[[0.2, 0.3, 0.5]])
    sampler.flush()
    assert shipped[0]["probabilities"].shape == (3, 3) and shipped[0]["probabilities"][2].tolist() == [0.2, 0.3, 0.5]
    sampler.offer([{"a": 4}], [0.5], "r3", ["z"], 1)  # one request without them: none are shipped
    sampler.offer([{"a": 5}], [0.5], "r4", ["z"], 1, probabilities=[[0.2, 0.3, 0.5]])
    sampler.flush()
    assert shipped[1] == {}
