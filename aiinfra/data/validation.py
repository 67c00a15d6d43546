"""Row-level validation of one batch against a ValidationSpec, with pyarrow.compute.

Each row either passes (cast to the declared types) or goes to quarantine with the first
reason it failed, as ``column: reason``. Rows in = rows kept + rows quarantined, always.
A problem with the batch as a whole (a declared column missing from the file) is not a row
problem: it raises InvalidInput naming the file and the column.

A plain function of a pyarrow Table: Ray Data calls it per batch, tests call it directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from aiinfra.data.spec import ColumnSpec, ValidationSpec
from aiinfra.errors import InvalidInput

__all__ = ["BatchResult", "REASON_COLUMN", "SOURCE_COLUMN", "validate_batch"]

REASON_COLUMN = "_reason"
SOURCE_COLUMN = "path"  # what Ray Data's include_paths adds


@dataclass
class BatchResult:
    good: pa.Table
    bad: pa.Table
    reasons: Counter[str] = field(default_factory=Counter)


def _cast_column(values: pa.ChunkedArray, col: ColumnSpec) -> tuple[pa.Array, pa.Array]:
    """Cast to the declared type. Returns (cast values, mask of values that failed to parse)."""
    target = col.arrow_type
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if values.type == target:
        return values, pa.array([False] * len(values), pa.bool_())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.utf8_trim_whitespace(values)
        # An empty string is a missing value, not a parse failure.
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
    try:
        cast = pc.cast(values, target, safe=True)
        return cast, pa.array([False] * len(values), pa.bool_())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    # Slow path, only for batches holding unparsable values: one value at a time.
    out, failed = [], []
    for v in values:
        if not v.is_valid:
            out.append(None)
            failed.append(False)
            continue
        try:
            out.append(v.cast(target).as_py())
            failed.append(False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError):
            out.append(None)
            failed.append(True)
    return pa.array(out, target), pa.array(failed, pa.bool_())


def validate_batch(table: pa.Table, spec: ValidationSpec) -> BatchResult:
    n = table.num_rows
    source = None
    if SOURCE_COLUMN in table.column_names and SOURCE_COLUMN not in spec.columns:
        source = table.column(SOURCE_COLUMN)
        table = table.drop_columns([SOURCE_COLUMN])
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        where = source[0].as_py() if source is not None and n else "the input"
        raise InvalidInput(f"{where}: missing column(s) {', '.join(missing)} declared in the spec")
    if not spec.allow_extra_columns:
        extra = [c for c in table.column_names if c not in spec.columns]
        if extra:
            where = source[0].as_py() if source is not None and n else "the input"
            raise InvalidInput(f"{where}: column(s) {', '.join(extra)} are not in the spec (allow_extra_columns is false)")

    reason = pa.nulls(n, pa.string())
    reasons: Counter[str] = Counter()

    def flag(bad: pa.Array, message: str) -> None:
        nonlocal reason
        bad = pc.fill_null(bad, False)
        newly = pc.and_(bad, pc.is_null(reason))
        count = pc.sum(newly).as_py() or 0
        if count:
            reasons[message] += count
            reason = pc.if_else(newly, pa.scalar(message), reason)

    cast_columns: dict[str, pa.Array] = {}
    for name, col in spec.columns.items():
        values, unparsable = _cast_column(table.column(name), col)
        cast_columns[name] = values
        flag(unparsable, f"{name}: not a valid {col.type}")
        if not col.nullable:
            flag(pc.is_null(values), f"{name}: null")
        if col.min is not None:
            flag(pc.less(values, col.min), f"{name}: below min {col.min:g}")
        if col.max is not None:
            flag(pc.greater(values, col.max), f"{name}: above max {col.max:g}")
        if col.allowed is not None:
            allowed = pa.array(col.allowed).cast(values.type) if col.type != "string" else pa.array([str(a) for a in col.allowed])
            flag(pc.invert(pc.is_in(values, value_set=allowed)), f"{name}: not an allowed value")
        if col.regex is not None:
            flag(pc.invert(pc.match_substring_regex(values, f"^(?:{col.regex})$")), f"{name}: does not match {col.regex!r}")

    ok = pc.is_null(reason)
    typed = table
    for name, values in cast_columns.items():
        typed = typed.set_column(typed.column_names.index(name), name, values)
    good = typed.filter(ok)
    raw_bad = table if source is None else table.append_column(SOURCE_COLUMN, source)
    bad = raw_bad.filter(pc.invert(ok)).append_column(REASON_COLUMN, pc.filter(reason, pc.invert(ok)))
    return BatchResult(good=good, bad=bad, reasons=reasons)
