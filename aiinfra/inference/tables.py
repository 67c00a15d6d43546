"""A batch of rows as an Arrow table, checked against the signature a column at a time.

Batch inference scores Parquet batches of thousands of rows. Turned into request-shaped dicts and checked value
by value (``rows_from_frame`` and the row checks), the demo model's batches cost 13 us a row, checks, transforms
and model together; checked by column, 4.4 us (BENCHMARKS.md, "Batch inference"). Here each input column is checked on its Arrow type with Arrow
compute (no nulls where the signature forbids them, a float column finite, an integer column in range) and goes
to the transforms as a numpy array or a list of Python values: what the row path would have given them.

The contract with the row path, which tests/unit/test_tables.py checks over generated tables:
- a column the typed checks accept is one the row checks accept, with the same values for the transforms;
- any other column is checked value by value with ``check_value``, the row path's own function;
- a batch with a bad value is refused with the row path's messages (``row_problems`` over its rows), so batch and
  online name a problem in the same words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from aiinfra.errors import InvalidInput
from aiinfra.inference.checks import check_value, row_problems
from aiinfra.registry.types import FieldSpec

__all__ = ["python_values", "table_columns"]

_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def table_columns(table: pa.Table, fields: Sequence[FieldSpec]) -> dict[str, Any]:
    """The signature's columns of ``table`` (those it has), ready for ``transform_columns``.

    Raises:
        InvalidInput: a value does not fit its field; the message is the row checks' (``instances[i].field: why``,
            ``i`` counted from the batch's first row).
    """
    present = set(table.column_names)
    columns: dict[str, Any] = {}
    fits = True
    for f in fields:
        if f.name not in present:
            fits = fits and f.nullable
            continue
        column = table.column(f.name)
        typed = _typed_values(f, column)
        if typed is not None:
            columns[f.name] = typed
            continue
        values = python_values(column, f)
        columns[f.name] = values
        fits = fits and all(check_value(f, v) is None for v in values)
    if not fits:
        raise InvalidInput("invalid input: " + "; ".join(_problems(table, fields)))
    return columns


def python_values(column: pa.ChunkedArray | pa.Array, field: FieldSpec) -> list[Any]:
    """A column's values as the row path sees them (``rows_from_frame``): Python scalars, NaN and null as None,
    and for a timestamp field a timestamp column's values as ISO 8601 text (what an HTTP client sends)."""
    if field.dtype == "timestamp" and pa.types.is_timestamp(column.type):
        return [None if pd.isna(t) else t.isoformat() for t in column.to_pandas().tolist()]
    return [None if v is None or (type(v) is float and v != v) else v for v in column.to_pylist()]


def _problems(table: pa.Table, fields: Sequence[FieldSpec]) -> list[str]:
    present = [f for f in fields if f.name in table.column_names]
    values = {f.name: python_values(table.column(f.name), f) for f in present}
    rows = [{name: column[i] for name, column in values.items()} for i in range(table.num_rows)]
    return row_problems({f.name: f for f in fields}, rows)


def _typed_values(field: FieldSpec, column: pa.ChunkedArray) -> Any:
    """The column's values for the transforms when its Arrow type alone shows that every value fits ``field``;
    None when it does not (the value-by-value checks decide, and name what is wrong)."""
    t = column.type
    if column.null_count and not field.nullable:
        return None
    if field.dtype in ("float32", "float64"):
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            return None
        if pa.types.is_floating(t):
            # The row path reads NaN as null (pandas' isna); infinities are refused.
            if not field.nullable and pc.any(pc.is_nan(column)).as_py():
                return None
            if pc.any(pc.is_inf(column)).as_py():
                return None
        return column.to_numpy().astype(np.float64, copy=False)  # nulls as NaN, as np.array([.., None]) gives
    if field.dtype in ("int32", "int64"):
        if not pa.types.is_integer(t):
            return None  # integral floats fit too: the value checks say which
        low, high = _INT_BOUNDS[field.dtype]
        bounds = pc.min_max(column).as_py()
        if bounds["min"] is not None and not (low <= bounds["min"] and bounds["max"] <= high):
            return None
        # Python ints (a numpy int array where there is no null): an integer category reads "3", as online.
        return column.to_numpy() if not column.null_count else column.to_pylist()
    if field.dtype == "bool":
        return column.to_pylist() if pa.types.is_boolean(t) else None
    if field.dtype == "string":
        return column.to_pylist() if (pa.types.is_string(t) or pa.types.is_large_string(t)) else None
    return None  # timestamps (and anything new): the value checks, on ISO text as the row path sends
