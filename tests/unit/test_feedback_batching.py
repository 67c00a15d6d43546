"""/feedback from concurrent requests in as few monitor calls as the monitor can take (group commit)."""

from __future__ import annotations

import threading
import time

import pytest

from aiinfra.serving.feedback import FeedbackBatcher


class SlowMonitor:
    """Answers each item by its request id: ids starting with 'u' are unknown, 'x' invalid; 50 ms a call."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def feedback(self, items):
        self.calls.append(len(items))
        time.sleep(0.05)
        if self.fail is not None:
            raise self.fail
        outcomes = ["unknown" if i["request_id"].startswith("u") else "invalid" if i["request_id"].startswith("x")
                    else "matched" for i in items]
        return {"outcomes": outcomes}


def run_concurrently(batcher: FeedbackBatcher, requests: list[list[dict]]) -> list:
    results: list = [None] * len(requests)

    def one(i: int) -> None:
        try:
            results[i] = batcher.submit(requests[i])
        except Exception as e:  # noqa: BLE001 - the test looks at it
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_requests_share_calls_and_each_gets_its_own_counts():
    monitor = SlowMonitor()
    batcher = FeedbackBatcher(monitor.feedback)
    requests = [[{"request_id": f"r{i}", "label": 1}, {"request_id": f"u{i}", "label": 0}] if i % 2 else
                [{"request_id": f"x{i}", "label": 1}] for i in range(40)]
    results = run_concurrently(batcher, requests)
    for i, r in enumerate(results):
        assert r == ({"matched": 1, "unknown": 1, "invalid": 0, "refused": 0} if i % 2 else
                     {"matched": 0, "unknown": 0, "invalid": 1, "refused": 0})
    assert sum(monitor.calls) == 60 and len(monitor.calls) < 40 / 4  # far fewer calls than requests
    assert batcher.requests == 40 and batcher.calls == len(monitor.calls)


def test_a_lone_request_is_sent_at_once():
    monitor = SlowMonitor()
    batcher = FeedbackBatcher(monitor.feedback)
    t0 = time.perf_counter()
    assert batcher.submit([{"request_id": "r1", "label": 1}]) == {"matched": 1, "unknown": 0, "invalid": 0, "refused": 0}
    assert time.perf_counter() - t0 < 0.5 and monitor.calls == [1]


def test_a_call_carries_at_most_max_items_and_a_failure_reaches_every_request_in_it():
    monitor = SlowMonitor()
    batcher = FeedbackBatcher(monitor.feedback, max_items=5)
    run_concurrently(batcher, [[{"request_id": f"r{i}-{j}", "label": 1} for j in range(2)] for i in range(10)])
    assert max(monitor.calls) <= 5 and sum(monitor.calls) == 20

    broken = FeedbackBatcher(SlowMonitor(fail=ConnectionError("monitor down")).feedback)
    results = run_concurrently(broken, [[{"request_id": f"r{i}", "label": 1}] for i in range(8)])
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(RuntimeError, match="outcomes"):
        FeedbackBatcher(lambda items: {"matched": len(items)}).submit([{"request_id": "r", "label": 1}])


def test_a_fast_monitor_is_called_at_most_once_per_min_interval():
    """Requests arriving one after another (not while a call is in flight) still share calls under load."""
    calls: list[int] = []

    def fast(items):
        calls.append(len(items))
        return {"outcomes": ["matched"] * len(items)}

    batcher = FeedbackBatcher(fast, min_interval_s=0.2)
    results: list = []
    threads = []
    t0 = time.perf_counter()
    for i in range(20):  # one request every 10 ms for 0.2 s
        t = threading.Thread(target=lambda i=i: results.append(batcher.submit([{"request_id": f"r{i}", "label": 1}])))
        t.start()
        threads.append(t)
        time.sleep(0.01)
    for t in threads:
        t.join(5)
    assert len(results) == 20 and all(r["matched"] == 1 for r in results)
    assert sum(calls) == 20 and len(calls) <= 3  # the first at once, the rest gathered per interval
    assert time.perf_counter() - t0 < 2.0
