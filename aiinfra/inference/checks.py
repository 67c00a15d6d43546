"""The signature's checks on one value, on one column and on request rows: one place for what "fits" means.

Every path that takes rows (a JSON request, an OIP request's tensors, a batch's Arrow columns) ends in these
functions or in a test that it agrees with them, so a value is refused (or accepted) the same way everywhere.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aiinfra.registry.types import FieldSpec

__all__ = ["check_value", "column_fits", "row_problems"]


def check_value(field: FieldSpec, value: Any) -> str | None:
    """Why ``value`` does not fit ``field``, or None when it does."""
    if value is None:
        return None if field.nullable else "must not be null"
    if field.dtype in ("float32", "float64"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {type(value).__name__}"
        if isinstance(value, int) and abs(value) > sys.float_info.max:  # math.isfinite would raise OverflowError
            return "is out of range"
        if not math.isfinite(value):
            return "must be finite"
    elif field.dtype in ("int32", "int64"):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return f"must be an integer, got {value!r}"
        bits = 31 if field.dtype == "int32" else 63
        if not -(2**bits) <= value < 2**bits:
            return f"is out of range for {field.dtype}"
    elif field.dtype == "bool":
        if not isinstance(value, bool):
            return f"must be true or false, got {type(value).__name__}"
    elif field.dtype == "string" and not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    elif field.dtype == "timestamp":
        if not isinstance(value, str):
            return f"must be an ISO 8601 timestamp string, got {type(value).__name__}"
        try:
            pd.Timestamp(value)
        except (ValueError, TypeError):
            return f"must be an ISO 8601 timestamp, got {value!r}"
    return None


def row_problems(fields: Mapping[str, FieldSpec], rows: Sequence[Any], limit: int = 20) -> list[str]:
    """What is wrong with each row against the signature's fields, named ``instances[i].field: why``; the first
    ``limit`` problems (then a note that there are more). Empty when every row fits."""
    problems: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"instances[{i}]: must be an object, got {type(row).__name__}")
            continue
        for name in sorted(set(row) - set(fields)):
            problems.append(f"instances[{i}].{name}: unknown field")
        for name, field in fields.items():
            if name not in row:
                if not field.nullable:
                    problems.append(f"instances[{i}].{name}: missing")
                continue
            why = check_value(field, row[name])
            if why:
                problems.append(f"instances[{i}].{name}: {why}")
        if len(problems) >= limit:
            problems.append("(further problems not listed)")
            break
    return problems


def column_fits(field: FieldSpec, values: Sequence[Any]) -> bool:
    """A whole column passes ``check_value`` (True), or may not (False: the row checks decide)."""
    if field.dtype in ("float32", "float64"):
        if not all(type(v) is float or type(v) is int for v in values):  # bool is not a number here
            return False
        try:
            return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())
        except OverflowError:  # an int beyond float range
            return False
    if field.dtype in ("int32", "int64"):
        if not all(type(v) is int for v in values):  # integral floats are fine too, but the row checks say so
            return False
        bits = 31 if field.dtype == "int32" else 63
        return all(-(2**bits) <= v < 2**bits for v in values)
    if field.dtype == "bool":
        return all(type(v) is bool for v in values)
    if field.dtype == "string":
        return all(type(v) is str for v in values)
    return False  # timestamps (and anything new): the row checks
