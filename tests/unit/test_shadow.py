"""Shadow traffic: compared off the request path, bounded, never raised."""

from __future__ import annotations

import threading

import pytest

from aiinfra.serving.shadow import ShadowComparer, compare_predictions


class Fake:
    def __init__(self, answers=None, fail=False, gate=None):
        self.answers, self.fail, self.gate, self.version = answers, fail, gate, "fake@2"

    def predict(self, rows):
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise RuntimeError("broken shadow")
        return self.answers


def test_compare_counts_agreeing_labels_and_the_largest_probability_gap():
    a = [{"label": 1, "probability": 0.9}, {"label": 0, "probability": 0.2}]
    b = [{"label": 1, "probability": 0.7}, {"label": 1, "probability": 0.6}]
    assert compare_predictions(a, b) == {"rows": 2.0, "same": 1.0, "max_diff": pytest.approx(0.4)}
    assert compare_predictions([{"value": 3.0}], [{"value": 3.5}]) == {"rows": 1.0, "same": 0.0, "max_diff": 0.5}


def test_mirrors_are_compared_in_the_background_and_failures_only_counted():
    comparer = ShadowComparer()
    primary = [{"label": 1, "probability": 0.9}]
    comparer.mirror(Fake([{"label": 1, "probability": 0.8}]), [{"x": 1}], primary)
    comparer.mirror(Fake(fail=True), [{"x": 1}], primary)
    comparer.drain()
    s = comparer.summary()
    assert s["mirrored"] == 1 and s["errors"] == 1 and s["agreement"] == 1.0


def test_a_slow_shadow_skips_mirrors_instead_of_queueing_without_bound():
    gate = threading.Event()
    comparer = ShadowComparer(capacity=2)
    slow = Fake([{"label": 1}], gate=gate)
    for _ in range(10):
        comparer.mirror(slow, [{"x": 1}], [{"label": 1}])  # returns at once every time
    assert comparer.summary()["skipped"] >= 7
    gate.set()


def test_close_ends_the_comparing_thread_after_what_is_queued():
    """A router stopped (its model removed from the endpoint) leaves no thread behind."""
    gate = threading.Event()
    comparer = ShadowComparer()
    comparer.mirror(Fake([{"label": 1}], gate=gate), [{"x": 1}], [{"label": 1}])
    comparer.close()
    assert comparer._thread.is_alive()  # still comparing what was queued
    gate.set()
    comparer._thread.join(timeout=5)
    assert not comparer._thread.is_alive()
    assert comparer.summary()["mirrored"] == 1  # what was queued before close was still compared
