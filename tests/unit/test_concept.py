"""Concept drift on the error stream (ADWIN through river), on seeded streams with known change points."""

from __future__ import annotations

import numpy as np
import pytest

from aiinfra.monitoring.concept import ErrorStreamDetector


def errors(rng: np.random.Generator, rate: float, n: int) -> list[float]:
    return (rng.random(n) < rate).astype(float).tolist()


def test_a_rise_in_the_error_rate_is_found_soon_after_it_starts():
    rng = np.random.default_rng(0)
    detector = ErrorStreamDetector("binary")
    assert detector.update(errors(rng, 0.15, 3000)) == []
    found = detector.update(errors(rng, 0.35, 2000))
    assert found, "an error rate going from 0.15 to 0.35 went unnoticed for 2,000 labelled rows"
    first = found[0]
    assert first["at_row"] - 3000 < 600  # detection delay, in labelled rows
    assert first["before"] == pytest.approx(0.15, abs=0.05) and first["after"] > 0.25
    assert detector.rows == 5000


def test_no_alarm_on_a_stationary_stream_and_a_fall_is_not_concept_drift():
    rng = np.random.default_rng(1)
    detector = ErrorStreamDetector("multiclass")
    assert detector.update(errors(rng, 0.2, 20_000)) == []  # delta 0.002: false alarms are rare
    assert detector.update(errors(rng, 0.05, 3000)) == []  # the model got better: not reported


def test_regression_errors_are_scaled_by_the_baseline_and_non_finite_values_skipped():
    detector = ErrorStreamDetector("regression", baseline_rmse=2.0)
    assert detector.error_of(None, 3.0) == pytest.approx(0.5) and detector.error_of(None, 60.0) == 1.0
    assert detector.update([float("nan"), float("inf"), 0.1]) == [] and detector.rows == 1
    assert ErrorStreamDetector("binary").error_of(False) == 1.0


def _river_delay(pre: np.ndarray, post: np.ndarray) -> int | None:
    from river.drift import ADWIN

    adwin = ADWIN(delta=0.002)
    for i, value in enumerate(np.concatenate([pre, post])):
        adwin.update(float(value))
        if adwin.drift_detected and i >= len(pre):
            return i + 1 - len(pre)
    return None


def test_it_detects_as_soon_as_rivers_adwin_does():
    """The numpy ADWIN against river's (the reference implementation) on the same seeded streams."""
    rng = np.random.default_rng(3)
    ours, theirs = [], []
    for _ in range(8):
        pre, post = (rng.random(4000) < 0.2).astype(float), (rng.random(4000) < 0.3).astype(float)
        detector = ErrorStreamDetector("binary")
        assert detector.update(pre) == []
        found = detector.update(post)
        assert found, "a rise from 0.2 to 0.3 went unnoticed for 4,000 rows"
        ours.append(found[0]["at_row"] - 4000)
        delay = _river_delay(pre, post)
        assert delay is not None
        theirs.append(delay)
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.25 * np.mean(theirs), (ours, theirs)


def test_the_same_rows_in_any_batches_give_the_same_detections():
    rng = np.random.default_rng(4)
    stream = np.concatenate([(rng.random(3000) < 0.1).astype(float), (rng.random(3000) < 0.4).astype(float)])
    whole = ErrorStreamDetector("binary").update(stream)
    pieces = ErrorStreamDetector("binary")
    found = [f for i in range(0, len(stream), 7) for f in pieces.update(stream[i:i + 7])]
    assert whole and [f["at_row"] for f in found] == [f["at_row"] for f in whole]
    assert found[0]["before"] == pytest.approx(whole[0]["before"]) and found[0]["after"] == pytest.approx(whole[0]["after"])


def test_a_detector_restored_from_its_state_finds_what_the_uninterrupted_one_does():
    import json

    rng = np.random.default_rng(6)
    stream = np.concatenate([(rng.random(4000) < 0.1).astype(float), (rng.random(2000) < 0.4).astype(float)])
    whole = ErrorStreamDetector("binary").update(stream)
    first = ErrorStreamDetector("binary")
    assert first.update(stream[:3990]) == []
    restored = ErrorStreamDetector("binary")
    restored.import_state(json.loads(json.dumps(first.export_state())))  # through the JSON checkpoint
    assert [f["at_row"] for f in restored.update(stream[3990:])] == [f["at_row"] for f in whole]


def test_a_batchs_checks_tested_together_find_what_one_at_a_time_finds():
    def detections(stream: np.ndarray, one_at_a_time: bool) -> list[tuple]:
        detector = ErrorStreamDetector("binary")
        if one_at_a_time:  # every check goes through the sequential path
            detector._adwin._first_cut = lambda ts: 0
        found = [f for i in range(0, len(stream), 137) for f in detector.update(stream[i:i + 137])]
        return [(f["at_row"], round(f["before"], 9), round(f["after"], 9)) for f in found]

    rng = np.random.default_rng(7)
    for _ in range(8):
        stream = np.concatenate([(rng.random(int(rng.integers(500, 4000))) < rng.uniform(0.05, 0.5)).astype(float)
                                 for _ in range(4)])
        assert detections(stream, False) == detections(stream, True)
