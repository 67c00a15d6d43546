"""Served rows shipped column by column: the same rows to everyone who reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiinfra.errors import InvalidInput
from aiinfra.inference.columns import Columns, to_columns
from aiinfra.monitoring.performance import PerformanceTracker

ROWS = [{"x": 1.0, "plan": "a"}, {"x": 2.0, "plan": "b"}, {"x": 3.0, "plan": "a"}]


def test_rows_with_the_same_fields_become_columns_and_read_back_as_rows():
    cols = to_columns(ROWS)
    assert cols is not None and cols.columns["plan"] == ["a", "b", "a"]
    # Floats travel as one float64 array (Ray ships its buffer as it is); other values as a list of them.
    assert isinstance(cols.columns["x"], np.ndarray) and cols.columns["x"].tolist() == [1.0, 2.0, 3.0]
    assert cols == to_columns(ROWS) and cols.take([2, 0]) == [ROWS[2], ROWS[0]]
    assert len(cols) == 3 and dict(cols[1]) == ROWS[1] and dict(cols[-1]) == ROWS[2]
    assert cols == ROWS and cols[1:] == ROWS[1:] and {**cols[0], "label": 1} == {**ROWS[0], "label": 1}
    with pytest.raises(IndexError):
        cols[3]


def test_rows_with_other_fields_are_left_as_they_are():
    assert to_columns([]) is None
    assert to_columns([{"x": 1.0}, {"x": 2.0, "extra": 1}]) is None
    assert to_columns([{"x": 1.0, "y": 2}, {"y": 3, "x": 2.0}]) is not None  # the same fields, in another order


def test_ragged_or_scalar_columns_are_refused():
    with pytest.raises(InvalidInput, match="one length"):
        Columns({"x": [1.0, 2.0], "y": [1]})
    with pytest.raises(InvalidInput, match="list of values"):
        Columns({"x": 1.0})


def test_pending_rows_held_as_views_are_labelled_and_checkpointed_as_columns():
    tracker = PerformanceTracker("binary", [0, 1], {"accuracy": 0.8})
    cols = to_columns(ROWS)
    tracker.record(["r1", "r1", "r2"], [0.9, 0.2, 0.7], rows=cols, versions=[1, 1, 1])
    state = json.loads(json.dumps(tracker.export_state()))  # the checkpoint is JSON: no views in it
    # Each request's rows as columns (a slice per field, not a dict per row), and read back as the same rows.
    assert state["pending"][0][3] == {"columns": {k: [r[k] for r in ROWS[:2]] for k in ROWS[0]}}
    restored = PerformanceTracker("binary", [0, 1], {"accuracy": 0.8})
    assert restored.import_state(state) == 2 and restored.pending_bytes > 0
    assert restored.judge([{"request_id": "r2", "label": 1}]) == ["matched"]
    assert restored.labelled_rows()[0] == {**ROWS[2], "label": 1, "served_at": restored.labelled_rows()[0]["served_at"],
                                           "version": 1, "labelled_by": None, "label_trusted": True}
    # A checkpoint written before (rows as a list of dicts) still reads.
    old = {"pending": [["r9", [0.5], 1, [dict(ROWS[0])], 1.0, None]], "held": []}
    assert restored.import_state(old) == 2 and restored.judge([{"request_id": "r9", "label": 0}]) == ["matched"]
    assert tracker.judge([{"request_id": "r1", "labels": [1, 0]}]) == ["matched"]
    (first, second) = tracker.labelled_rows()
    assert first == {**ROWS[0], "label": 1, "served_at": first["served_at"], "version": 1, "labelled_by": None, "label_trusted": True}
    assert type(first) is dict and second["plan"] == "b"


def test_runs_read_as_the_per_row_values_they_stand_for():
    import pickle

    from aiinfra.inference.columns import Runs

    runs = Runs(["a", "b", "c"], [2, 0, 3])  # a request of 2 rows, one of none, one of 3
    rows = ["a", "a", "c", "c", "c"]
    assert len(runs) == 5 and list(runs) == rows and runs == rows
    assert [runs[i] for i in range(-5, 5)] == rows + rows
    assert all(list(runs[a:b]) == rows[a:b] for a in range(6) for b in range(6))
    assert runs.at([0, 1, 2, 4]) == ["a", "a", "c", "c"] and runs.starts().tolist() == [0, 2, 2]
    assert Runs.of(["x", "x", 1, True]).values == ["x", 1, True]  # 1 and True are equal, not the same value
    assert pickle.loads(pickle.dumps(runs)) == rows
    with pytest.raises(IndexError):
        runs[5]
    with pytest.raises(ValueError, match="run values"):
        Runs(["a"], [1, 2])
