"""What the join of labels to predictions keeps, a chunk per join: numbers as arrays, rows as columns.

The monitor joins thousands of labelled rows a second. Kept one Python object per row (a tuple per
labelled prediction, a dict per labelled feature row) they cost microseconds each; kept as one array
(or one ``Columns``) per join they cost a few numpy calls per join. Readers (the rolling metrics, a
window's realised performance, a retrain's rows) are rare and take the concatenation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aiinfra.inference.columns import Columns

__all__ = ["LabelledRows", "Table"]

# Chunks kept before they are merged into one: many tiny joins (one label each, at low traffic) must not
# cost an object per join for long.
MERGE_AT = 256


class Table:
    """The latest ``limit`` rows of a float table ``width`` wide."""

    def __init__(self, width: int, limit: int) -> None:
        self.width, self.limit = width, limit
        self._chunks: deque[np.ndarray] = deque()
        self._n = 0

    def __len__(self) -> int:
        return min(self._n, self.limit)

    def append(self, block: np.ndarray) -> None:
        if not len(block):
            return
        block = block[-self.limit:]
        self._chunks.append(block)
        self._n += len(block)
        while self._n - len(self._chunks[0]) >= self.limit:
            self._n -= len(self._chunks.popleft())
        if len(self._chunks) > MERGE_AT:
            merged = self.array()
            self._chunks, self._n = deque([merged]), len(merged)

    def array(self) -> np.ndarray:
        """The rows, oldest first, as one (n, width) array."""
        if not self._chunks:
            return np.empty((0, self.width))
        return np.concatenate(list(self._chunks))[-self.limit:]

    def clear(self) -> None:
        self._chunks.clear()
        self._n = 0


class LabelledRows:
    """The latest ``limit`` labelled feature rows: each chunk the rows of one join (``Columns``, or a list of
    rows when they do not share their fields) and, per row, what the join adds to them (``label``,
    ``served_at``, ``version``, ``labelled_by``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: deque[tuple[Sequence[Mapping[str, Any]], dict[str, list[Any]]]] = deque()
        self._n = 0

    def __len__(self) -> int:
        return min(self._n, self.limit)

    def append(self, rows: Sequence[Mapping[str, Any]], extra: dict[str, list[Any]]) -> None:
        if not len(rows):
            return
        self._chunks.append((rows, extra))
        self._n += len(rows)
        while self._n - len(self._chunks[0][0]) >= self.limit:
            self._n -= len(self._chunks.popleft()[0])
        if len(self._chunks) > MERGE_AT:
            self._merge()

    def clear(self) -> None:
        self._chunks.clear()
        self._n = 0

    def extend(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows that already carry the join's fields (another shard's handoff)."""
        self.append(list(rows), {})

    def _merge(self) -> None:
        """The newest MERGE_AT chunks (the small ones) as one: older merged chunks are left as they are, so a
        merge costs the rows of those chunks, not all the rows kept."""
        chunks = [self._chunks.pop() for _ in range(MERGE_AT)][::-1]
        keys = chunks[0][1].keys()
        if all(isinstance(r, Columns) and r.columns.keys() == chunks[0][0].columns.keys()  # type: ignore[attr-defined]
               and e.keys() == keys for r, e in chunks):
            rows: Sequence[Mapping[str, Any]] = Columns.concat([r for r, _ in chunks])  # type: ignore[misc]
            extra = {k: [v for _, e in chunks for v in e[k]] for k in keys}
        else:
            rows, extra = [row for r, e in chunks for row in _as_dicts(r, e)], {}
        self._chunks.append((rows, extra))

    def rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The latest ``limit`` (or all) rows as dicts, oldest first."""
        want = len(self) if limit is None else min(limit, len(self))
        out: list[dict[str, Any]] = []
        for rows, extra in reversed(self._chunks):
            if len(out) >= want:
                break
            take = min(len(rows), want - len(out))
            out[:0] = _as_dicts(rows, extra, len(rows) - take)
        return out


def _as_dicts(rows: Sequence[Mapping[str, Any]], extra: dict[str, list[Any]], start: int = 0) -> list[dict[str, Any]]:
    """Rows ``start:`` of a chunk as new dicts, with the join's fields."""
    out = []
    for i in range(start, len(rows)):
        row = rows[i]
        row = row.as_dict() if hasattr(row, "as_dict") else dict(row)
        for k, values in extra.items():
            row[k] = values[i]
        out.append(row)
    return out
