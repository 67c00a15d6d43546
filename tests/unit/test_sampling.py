"""The serving side of monitoring: sampling never blocks or fails a response, and drops are counted."""

from __future__ import annotations

import threading
import time

from aiinfra.serving.sampling import MonitorSampler


def test_rows_are_shipped_in_batches_with_their_scores_and_request_ids():
    shipped = []
    sampler = MonitorSampler(lambda *batch: shipped.append(batch), start=False)
    sampler.offer([{"a": 1}, {"a": 2}], [0.1, 0.9], "r1", ["no", "yes"], version=1)
    sampler.offer([{"a": 3}], [0.5], "r2", version=2)
    sampler.offer_error(2)
    sampler.offer_error(2)
    assert sampler.flush() == 3
    assert shipped == [([{"a": 1}, {"a": 2}, {"a": 3}], [0.1, 0.9, 0.5], ["r1", "r1", "r2"], ["no", "yes", None],
                        [1, 1, 2], {2: 2}, [None, None, None])]
    assert sampler.flush() == 0 and sampler.counts["sent"] == 3
    sampler.offer_error(1)  # errors alone are shipped too, with no rows
    sampler.flush()
    assert shipped[-1] == ([], [], [], [], [], {1: 1}, [])


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
