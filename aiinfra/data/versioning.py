"""Content addresses for datasets: the same rows give the same id, whatever their order or partitioning.

Each row is hashed (pandas' vectorized row hash, two independent keys, over the columns in
name order with types normalized so a batch with nulls hashes like one without); a batch's
digest is the count and the two wrapping sums of its row hashes. Sums commute, so digests
merge in any order, and the version id is a SHA-256 over the schema and the merged digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["ContentDigest", "content_digest", "row_hashes", "schema_fingerprint"]

_KEYS = ("aiinfra-rowkey-1", "aiinfra-rowkey-2")  # hash_pandas_object wants exactly 16 characters

_PANDAS_TYPES = {
    pa.int8(): pd.Int64Dtype(), pa.int16(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype(), pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.Int64Dtype(), pa.uint16(): pd.Int64Dtype(), pa.uint32(): pd.Int64Dtype(),
    pa.float32(): pd.Float64Dtype(), pa.float64(): pd.Float64Dtype(),
    pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype(), pa.bool_(): pd.BooleanDtype(),
}


@dataclass(frozen=True)
class ContentDigest:
    rows: int = 0
    sum1: int = 0
    sum2: int = 0

    def merge(self, o: ContentDigest) -> ContentDigest:
        mask = (1 << 64) - 1
        return ContentDigest(self.rows + o.rows, (self.sum1 + o.sum1) & mask, (self.sum2 + o.sum2) & mask)


def schema_fingerprint(schema: pa.Schema) -> str:
    return ";".join(f"{f.name}:{f.type}" for f in sorted(schema, key=lambda f: f.name))


def _normalized_frame(table: pa.Table) -> pd.DataFrame:
    ordered = table.select(sorted(table.column_names))
    return ordered.to_pandas(types_mapper=_PANDAS_TYPES.get)


def row_hashes(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    df = _normalized_frame(table)
    h1 = pd.util.hash_pandas_object(df, index=False, hash_key=_KEYS[0]).to_numpy(dtype=np.uint64)
    h2 = pd.util.hash_pandas_object(df, index=False, hash_key=_KEYS[1]).to_numpy(dtype=np.uint64)
    return h1, h2


def content_digest(h1: np.ndarray, h2: np.ndarray) -> ContentDigest:
    with np.errstate(over="ignore"):
        return ContentDigest(len(h1), int(h1.sum(dtype=np.uint64)), int(h2.sum(dtype=np.uint64)))


def version_id(schema: pa.Schema, digest: ContentDigest, layout: str = "") -> str:
    """The version's id: its schema and content, and its file layout where the files are partitioned (the same
    rows partitioned by a column are another version: readers find other files)."""
    h = hashlib.sha256(schema_fingerprint(schema).encode())
    h.update(f"|{digest.rows}|{digest.sum1:016x}|{digest.sum2:016x}".encode())
    if layout:
        h.update(f"|partition_by={layout}".encode())
    return h.hexdigest()[:16]
