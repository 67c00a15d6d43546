"""A dataset version's files laid out by the values of some columns (Hive style: ``plan=basic/part-....parquet``).

Readers that prune by directory (DuckDB, Spark, pyarrow.dataset, Athena) then read one segment's files only. The
partition columns stay inside the files as well: each file is whole on its own, so aiinfra's readers (which open
a version's files by name) and anyone else's see the same rows.

Only columns with few, exact values partition a dataset: text, integers, booleans and dates. A float column
would give a directory per value; a batch with more than ``MAX_PARTITIONS_PER_BATCH`` distinct values is refused
rather than writing thousands of tiny files.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from aiinfra.errors import InvalidInput

__all__ = ["MAX_PARTITIONS_PER_BATCH", "NULL_PARTITION", "check_partition_columns", "split_by"]

MAX_PARTITIONS_PER_BATCH = 1024
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # Hive's, Spark's and pyarrow's name for the null value's directory


def _partitionable(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_boolean(t) or pa.types.is_date(t))


# The same types by name, as a version's manifest records its schema (``str(arrow_type)``).
_PARTITIONABLE_NAMES = ("string", "large_string", "int", "uint", "bool", "date")


def check_partition_columns(columns: Sequence[str], types: dict[str, str | pa.DataType]) -> None:
    """Raise InvalidInput unless every column is in ``types`` (name -> Arrow type, or its name as a manifest
    records it) and of a partitionable type."""
    if len(set(columns)) != len(columns):
        raise InvalidInput(f"partition columns must differ, got {', '.join(columns)}")
    for c in columns:
        if c not in types:
            raise InvalidInput(f"cannot partition by {c!r}: no such column (the columns are {', '.join(sorted(types))})")
        t = types[c]
        fits = _partitionable(t) if isinstance(t, pa.DataType) else t.startswith(_PARTITIONABLE_NAMES)
        if not fits:
            raise InvalidInput(f"cannot partition by {c!r}: its type is {t}; partition by text, integer, boolean or "
                               "date columns (a float gives a directory per value)")


def _segment(column: str, value: object) -> str:
    text = NULL_PARTITION if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{quote(column, safe='')}={quote(text, safe='') if value is not None else text}"


def split_by(table: pa.Table, columns: Sequence[str]) -> list[tuple[str, pa.Table]]:
    """``table``'s rows grouped by the values of ``columns``: (relative directory, rows) per distinct value."""
    if not columns:
        return [("", table)]
    check_partition_columns(columns, {f.name: f.type for f in table.schema})
    keys = table.select(list(columns)).group_by(list(columns), use_threads=False).aggregate([]).to_pylist()
    if len(keys) > MAX_PARTITIONS_PER_BATCH:
        raise InvalidInput(f"partitioning by {', '.join(columns)} gives {len(keys):,} directories for one batch of "
                           f"{table.num_rows:,} rows (at most {MAX_PARTITIONS_PER_BATCH:,}); partition by a coarser column")
    out = []
    for key in keys:
        mask = None
        for c in columns:
            v = key[c]
            m = pc.is_null(table.column(c)) if v is None else pc.fill_null(pc.equal(table.column(c), pa.scalar(v, table.schema.field(c).type)), False)
            mask = m if mask is None else pc.and_(mask, m)
        out.append(("/".join(_segment(c, key[c]) for c in columns), table.filter(mask)))
    return out
