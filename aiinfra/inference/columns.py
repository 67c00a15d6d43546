"""Served rows column by column: an OIP request's tensors, and a replica's sample on its way to the monitor.

A replica's sample is thousands of feature rows with the same fields. Shipped as one list per field, they
cost a fraction of what a list of dicts costs to pickle, to unpickle in the monitor and to turn into the
window's frame (measured in BENCHMARKS.md, "The monitor's CPU under load"). The monitor still keeps
rows for the labels to come: ``Columns[i]`` is a read-only view of row ``i``, copied into a dict only when
its label arrives (or a checkpoint is written).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

from aiinfra.errors import InvalidInput

__all__ = ["ColumnRow", "Columns", "RowSpan", "Runs", "flatten", "gather", "plain", "to_columns"]


class ColumnRow(Mapping[str, Any]):
    """Row ``i`` of ``Columns``, without copying it."""

    __slots__ = ("_columns", "_i")

    def __init__(self, columns: Mapping[str, Sequence[Any]], i: int) -> None:
        self._columns, self._i = columns, i

    def __getitem__(self, key: str) -> Any:
        return self._columns[key][self._i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def as_dict(self) -> dict[str, Any]:
        """A plain copy (faster than ``dict(row)``, which walks the Mapping protocol)."""
        i = self._i
        return {k: v[i] for k, v in self._columns.items()}


class RowSpan(Sequence[Mapping[str, Any]]):
    """Rows ``start`` to ``end`` of some columns, as views: how the monitor keeps one request's rows."""

    __slots__ = ("_columns", "_end", "_start")

    def __init__(self, columns: Mapping[str, Sequence[Any]], start: int, end: int) -> None:
        self._columns, self._start, self._end = columns, start, end

    def __len__(self) -> int:
        return self._end - self._start

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return ColumnRow(self._columns, self._start + i)


def flatten(items: Sequence[Any]) -> list[Mapping[str, Any]]:
    """Rows kept as a list of rows and ``RowSpan``s, as one list of rows."""
    out: list[Mapping[str, Any]] = []
    for item in items:
        if type(item) is RowSpan:
            out.extend(item)
        else:
            out.append(item)
    return out


def plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` as a new plain dict, whether a view or a mapping."""
    return row.as_dict() if type(row) is ColumnRow else dict(row)


class Columns(Sequence[Mapping[str, Any]]):
    """``columns``: field name -> one value per row, all the same length (else InvalidInput)."""

    def __init__(self, columns: Mapping[str, Sequence[Any]]) -> None:
        if not all(isinstance(k, str) for k in columns):
            raise InvalidInput("columnar rows need text field names")
        lengths = {len(v) for v in columns.values() if isinstance(v, (list, tuple, np.ndarray))}
        if len(lengths) > 1 or any(not isinstance(v, (list, tuple, np.ndarray)) for v in columns.values()):
            raise InvalidInput("columnar rows must map each field to a list of values, all of one length")
        self.columns = dict(columns)
        self._n = lengths.pop() if lengths else 0

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Mapping[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Mapping[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return Columns({k: v[i] for k, v in self.columns.items()})
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return ColumnRow(self.columns, i % self._n if self._n else i)

    def __eq__(self, other: object) -> bool:
        """Equal to Columns of the same values, or to a sequence of the same rows (as mappings)."""
        if isinstance(other, Columns):
            return self.columns.keys() == other.columns.keys() and all(
                list(v) == list(other.columns[k]) for k, v in self.columns.items())
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == self._n and all(self[i] == other[i] for i in range(self._n))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def take(self, positions: Sequence[int]) -> Columns:
        """The rows at ``positions``, in that order."""
        index = np.asarray(positions, dtype=np.intp)
        at = index.tolist()
        # itemgetter picks a list's values in C (a comprehension over numpy ints costs ~100 ns a value).
        pick = operator.itemgetter(*at) if len(at) > 1 else None
        return Columns({k: v[index] if isinstance(v, np.ndarray) else
                        (list(pick(v)) if pick is not None else [v[i] for i in at]) for k, v in self.columns.items()})

    @staticmethod
    def concat(parts: Sequence[Columns]) -> Columns:
        """Parts with the same fields, one after the other (arrays stay arrays when every part's are)."""
        fields = parts[0].columns.keys()
        out: dict[str, Any] = {}
        for f in fields:
            pieces = [p.columns[f] for p in parts]
            if all(isinstance(v, np.ndarray) for v in pieces):
                out[f] = np.concatenate(pieces)
            else:
                out[f] = [x for v in pieces for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
        return Columns(out)


# Below this many rows, gather copies rows one by one: a copy per column has a fixed cost (tens of us).
SMALL_GATHER = 32


def gather(parts: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """Kept rows (``RowSpan``s and rows), copied out in order: as ``Columns`` when they are all spans of
    columns with the same fields (a copy per column, not per row), else as a list of plain dicts."""
    if sum(len(p) if type(p) is RowSpan else 1 for p in parts) < SMALL_GATHER:
        return [plain(r) for r in flatten(parts)]  # a few rows: dicts cost less than a copy per column
    if all(type(p) is RowSpan for p in parts):
        spans: list[RowSpan] = list(parts)  # type: ignore[arg-type]
        fields = spans[0]._columns.keys()
        if all(s._columns.keys() == fields for s in spans):
            pieces, run, source = [], [], spans[0]._columns
            for s in spans:  # consecutive spans of one shipment: one take for all of them
                if s._columns is not source:
                    pieces.append(Columns(source).take(np.concatenate(run)))
                    run, source = [], s._columns
                run.append(np.arange(s._start, s._end))
            pieces.append(Columns(source).take(np.concatenate(run)))
            return pieces[0] if len(pieces) == 1 else Columns.concat(pieces)
    return [plain(r) for r in flatten(parts)]


class Runs(Sequence[Any]):
    """A value per row that every row of a request shares (its id, its token, the version that answered it),
    kept once per request with the request's row count: a replica's shipment of 5,000 rows from 100 requests
    carries 100 ids, not 5,000 (each a Python object to pickle, and to decode in the monitor).

    It reads as the per-row sequence it stands for (``len``, indexing, slicing, iteration, ``==``), so any
    code written for a list of one value per row takes it; ``values`` and ``lengths`` are the runs.
    """

    __slots__ = ("_ends", "lengths", "values")

    def __init__(self, values: Sequence[Any], lengths: Sequence[int]) -> None:
        if len(values) != len(lengths):
            raise ValueError(f"{len(values)} run values for {len(lengths)} run lengths")
        self.values = list(values)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if (self.lengths < 0).any():
            raise ValueError("run lengths must not be negative")
        self._ends = np.cumsum(self.lengths)

    @classmethod
    def of(cls, per_row: Sequence[Any]) -> Runs:
        """The runs of equal consecutive values of a per-row sequence."""
        if isinstance(per_row, Runs):
            return per_row
        values: list[Any] = []
        lengths: list[int] = []
        for v in per_row:
            if values and values[-1] == v and type(values[-1]) is type(v):
                lengths[-1] += 1
            else:
                values.append(v)
                lengths.append(1)
        return cls(values, lengths)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def starts(self) -> np.ndarray:
        """Each run's first row."""
        return self._ends - self.lengths

    def at(self, positions: Sequence[int] | np.ndarray) -> list[Any]:
        """The values at these rows (one vectorized search, not one per row)."""
        runs = np.searchsorted(self._ends, np.asarray(positions, dtype=np.int64), side="right")
        return [self.values[r] for r in runs.tolist()]

    def expand(self) -> list[Any]:
        return [v for v, k in zip(self.values, self.lengths.tolist()) for _ in range(k)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.expand())

    def __getitem__(self, i: Any) -> Any:
        n = len(self)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return self.expand()[i]
            stop = max(stop, start)
            first = int(np.searchsorted(self._ends, start, side="right"))
            last = int(np.searchsorted(self._ends, stop, side="left")) if stop > start else first - 1
            if stop <= start:
                return Runs([], [])
            lengths = self.lengths[first:last + 1].copy()
            lengths[0] -= start - int(self._ends[first] - self.lengths[first])
            lengths[-1] -= int(self._ends[last]) - stop
            return Runs(self.values[first:last + 1], lengths)
        if not -n <= i < n:
            raise IndexError(i)
        return self.values[int(np.searchsorted(self._ends, i % n, side="right"))]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Runs({self.values!r}, {self.lengths.tolist()!r})"


def to_columns(rows: Sequence[Mapping[str, Any]]) -> Columns | None:
    """``rows`` as columns when they all have the same fields in the same order (a replica's usual sample),
    else None (they are shipped as they are)."""
    if not rows:
        return None
    fields = rows[0].keys()
    if any(r.keys() != fields for r in rows):
        return None
    return Columns({f: _column([r[f] for r in rows]) for f in fields})


def _column(values: list[Any]) -> list[Any] | np.ndarray:
    # A column of floats as a float64 array: Ray ships an array's buffer as it is, where a list costs a
    # pickled object per value to send and to read back. Anything else stays a list (its values as they were).
    if all(type(v) is float for v in values):
        return np.array(values, dtype=np.float64)
    return values
