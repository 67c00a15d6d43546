"""Batch rows checked a column at a time (``tables.table_columns``) against the row path over the same rows.

The reference is what an HTTP client would send for each row (Arrow's Python values, NaN as null, timestamps
as ISO text) through the row checks and ``transform_rows``: the column path must accept exactly the tables the
rows path accepts, refuse the others with the same message, and give the transforms the same numbers.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiinfra.data.transforms import FeatureSpec, fit_features
from aiinfra.errors import InvalidInput
from aiinfra.inference.checks import row_problems
from aiinfra.inference.tables import table_columns
from aiinfra.registry.types import FieldSpec

DTYPES = ["float32", "float64", "int32", "int64", "bool", "string", "timestamp"]


def _reference_rows(table: pa.Table, fields: list[FieldSpec]) -> list[dict]:
    kinds = {f.name: f.dtype for f in fields}

    def value(name, v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if kinds.get(name) == "timestamp" and isinstance(v, dt.datetime):
            return pd.Timestamp(v).isoformat()
        return v
    names = [f.name for f in fields if f.name in table.column_names]
    return [{k: value(k, r[k]) for k in names} for r in table.select(names).to_pylist()]


def _reference_error(table: pa.Table, fields: list[FieldSpec]) -> str | None:
    problems = row_problems({f.name: f for f in fields}, _reference_rows(table, fields))
    return "invalid input: " + "; ".join(problems) if problems else None


def _column_error(table: pa.Table, fields: list[FieldSpec]) -> str | None:
    try:
        table_columns(table, fields)
    except InvalidInput as e:
        return str(e)
    return None


# Arrow columns of every type the lake holds, with the values that sit on the checks' edges.
_FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64), st.sampled_from([0.0, -1.5, 3.0, math.inf, -math.inf, math.nan]))
_EDGE_INTS = [0, 1, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63)]
_INTS = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from(_EDGE_INTS))
_COLUMNS = {
    "float64": (pa.float64(), _FLOATS),
    "float32": (pa.float32(), st.one_of(st.none(), st.floats(width=32, allow_nan=True, allow_infinity=True))),
    "int64": (pa.int64(), _INTS),
    "int32": (pa.int32(), st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))),
    "uint64": (pa.uint64(), st.one_of(st.none(), st.integers(0, 2**64 - 1), st.sampled_from([2**63 - 1, 2**63]))),
    "int8": (pa.int8(), st.one_of(st.none(), st.integers(-128, 127))),
    "bool": (pa.bool_(), st.one_of(st.none(), st.booleans())),
    "string": (pa.string(), st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["2026-01-02T03:04:05", "1.5", "x"]))),
    "large_string": (pa.large_string(), st.one_of(st.none(), st.text(max_size=3))),
    "timestamp": (pa.timestamp("us"), st.one_of(st.none(), st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2100, 1, 1)))),
    "timestamp_utc": (pa.timestamp("us", tz="UTC"), st.one_of(st.none(), st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2100, 1, 1)))),
    "date": (pa.date32(), st.one_of(st.none(), st.dates())),
}

_NUMBERS = ["float32", "float64", "int32", "int64"]
_FITTING = {"float64": _NUMBERS, "float32": _NUMBERS, "int64": _NUMBERS, "int32": _NUMBERS, "uint64": _NUMBERS,
            "int8": _NUMBERS, "bool": ["bool"], "string": ["string", "timestamp"], "large_string": ["string"],
            "timestamp": ["timestamp"], "timestamp_utc": ["timestamp"]}


@st.composite
def _case(draw):
    """A table of 1-3 columns of random Arrow types, and a signature over them (some columns absent)."""
    names = ["a", "b", "c"][: draw(st.integers(1, 3))]
    n = draw(st.integers(1, 8))
    arrays, fields = {}, []
    for name in names:
        kind = draw(st.sampled_from(sorted(_COLUMNS)))
        arrow_type, values = _COLUMNS[kind]
        if not draw(st.booleans()):  # a column without nulls, half of the time (else most cases are refusals)
            values = values.filter(lambda v: v is not None)
        column = draw(st.lists(values, min_size=n, max_size=n))
        if kind == "timestamp_utc":
            column = [None if v is None else v.replace(tzinfo=dt.timezone.utc) for v in column]
        if draw(st.booleans()) or len(fields) == 0:
            arrays[name] = pa.array(column, arrow_type)
        # Mostly a dtype the column may fit (else nearly every case is a refusal), sometimes any dtype.
        dtypes = _FITTING.get(kind, DTYPES) if draw(st.integers(0, 4)) else DTYPES
        fields.append(FieldSpec(name=name, dtype=draw(st.sampled_from(dtypes)), nullable=draw(st.booleans())))
    if not arrays:
        arrays["z"] = pa.array([1] * n)  # a column the signature does not name (the lake's other columns)
    table = pa.table(arrays)
    if draw(st.booleans()) and n > 1:  # as Ray Data hands over a batch: several chunks
        table = pa.concat_tables([table.slice(0, n // 2), table.slice(n // 2)])
    return table, fields


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_a_table_is_refused_exactly_when_its_rows_are_and_with_their_message(case):
    table, fields = case
    assert _column_error(table, fields) == _reference_error(table, fields)


def test_a_bad_value_is_named_with_its_row_in_the_batch():
    fields = [FieldSpec(name="x", dtype="float64"), FieldSpec(name="k", dtype="int32")]
    table = pa.table({"x": [1.0, float("inf"), None], "k": pa.array([1, 2, 2**40], pa.int64())})
    with pytest.raises(InvalidInput) as e:
        table_columns(table, fields)
    assert str(e.value) == ("invalid input: instances[1].x: must be finite; instances[2].x: must not be null; "
                            "instances[2].k: is out of range for int32")
    with pytest.raises(InvalidInput, match=r"instances\[0\]\.k: missing"):
        table_columns(pa.table({"x": [1.0]}), fields)


# A fitted pipeline over each kind of feature, for the transforms' side of the contract.
_SPEC = FeatureSpec.model_validate({"features": [
    {"column": "x", "steps": [{"op": "impute", "strategy": "median"}, {"op": "standardize"}]},
    {"column": "n", "steps": [{"op": "clip", "min": 0, "max": 20}, {"op": "standardize"}]},
    {"column": "c", "steps": [{"op": "one_hot"}]},
    {"column": "k", "steps": [{"op": "one_hot"}]},
    {"column": "t", "steps": [{"op": "datetime_parts", "parts": ["year", "month", "hour"]}]},
]})
_TRAIN = pd.DataFrame({
    "x": [0.5, 1.5, np.nan, 3.0], "n": [1, 5, 9, 30], "c": ["a", "b", "a", None], "k": [1, 2, 3, 1],
    "t": pd.to_datetime(["2026-01-01T01:00", "2026-02-01T05:00", "2026-03-01T09:00", "2026-04-01T12:00"]),
})
_PIPELINE = fit_features(_TRAIN, _SPEC)
_FIELDS = [FieldSpec(name="x", dtype="float64", nullable=True), FieldSpec(name="n", dtype="int64", nullable=True),
           FieldSpec(name="c", dtype="string", nullable=True), FieldSpec(name="k", dtype="int64", nullable=True),
           FieldSpec(name="t", dtype="timestamp", nullable=True)]


@st.composite
def _good_table(draw):
    n = draw(st.integers(1, 10))

    def col(values):
        return draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
    return pa.table({
        "x": pa.array(col(st.floats(-1e6, 1e6)), draw(st.sampled_from([pa.float64(), pa.float32()]))),
        "n": pa.array(col(st.integers(-50, 50)), draw(st.sampled_from([pa.int64(), pa.int32(), pa.int16()]))),
        "c": pa.array(col(st.sampled_from(["a", "b", "zz"])), pa.string()),
        "k": pa.array(col(st.integers(0, 4)), pa.int64()),
        "t": pa.array(col(st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2050, 1, 1))), pa.timestamp("us")),
        "other": pa.array(range(n)),
    })


@settings(max_examples=300, deadline=None)
@given(_good_table())
def test_the_transforms_get_the_same_numbers_from_columns_as_from_rows(table):
    by_columns = _PIPELINE.transform_columns(table_columns(table, _FIELDS), table.num_rows)
    by_rows = _PIPELINE.transform_rows(_reference_rows(table, _FIELDS))
    np.testing.assert_array_equal(by_columns, by_rows)


def test_an_integer_category_with_nulls_reads_as_online_not_as_pandas_floats():
    """pandas reads an int column with a null as floats (3 -> "3.0", an unseen category); a client sends 3."""
    from aiinfra.inference.predictor import rows_from_frame

    table = pa.table({"k": pa.array([3, None], pa.int64()), "x": [1.0, 2.0], "n": [1, 2], "c": ["a", "a"],
                      "t": pa.array([dt.datetime(2026, 1, 1)] * 2, pa.timestamp("us"))})
    online = _PIPELINE.transform_rows([{"k": 3, "x": 1.0, "n": 1, "c": "a", "t": "2026-01-01T00:00:00"}])
    np.testing.assert_array_equal(_PIPELINE.transform_columns(table_columns(table, _FIELDS), 2)[:1], online)
    through_pandas = _PIPELINE.transform_rows(rows_from_frame(table.to_pandas(), _FIELDS)[:1])
    assert not np.array_equal(through_pandas, online)
