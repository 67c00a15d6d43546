"""Concept drift on the error stream: the inputs look the same, the model is wrong more often.

When the relationship between inputs and label changes but the inputs do not, every input test stays
silent (and CBPE, which assumes that relationship holds, keeps estimating the old performance): the
only signal is the model's errors once labels arrive. ADWIN (Bifet and Gavalda, 2007) keeps a window of
the latest per-row errors and cuts it where two sub-windows' means differ by more than a bound that
holds with probability ``1 - delta``, so its false alarms are bounded and its detection delay shrinks as
the change grows.

The stream is one number per labelled row, in the order labels are joined: 1 for a wrong class and
0 for a right one (classification), or the absolute error over three times the baseline RMSE,
capped at 1 (regression: ADWIN's bound is for values in [0, 1]). Only a rise is concept drift; a
fall (the world got easier) is not reported.

Why ADWIN is written here, on numpy, and not taken from river (BSD-3-Clause, the reference the unit tests
compare it with): river's ``ADWIN.update`` takes one value per Python call, about 2.2 us each, which at
thousands of labels a second was the largest part of the monitor's time, and it has no batch update.
Feeding it chunk means instead makes it slower to detect (its bound's second term does not shrink with
the values' variance: 16-row chunks doubled the delay, measured). This one keeps the window's prefix sums
in arrays and tests, every ``CLOCK`` rows as river does, the same cut points river's exponential histogram
offers (``MAX_BUCKETS`` buckets of each size 1, 2, 4, ... from the newest row), with river's bound
(``delta' = ln(2 ln(width) / delta)``, Bernstein with the window's variance), all cut points of a
check at once. Unlike river's, the window is bounded (``MAX_WINDOW`` rows: a change is judged against
at most that much history), and after a detection the window drops its oldest rows up to the oldest
significant cut, repeatedly, until no cut holds (river drops one bucket at a time).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = ["RECENT_ROWS", "Adwin", "ConceptDrift", "ErrorStreamDetector"]

# ADWIN cuts conservatively (its kept window still holds some rows from before the change), so the new
# rate is read off the latest rows instead: at a typical detection delay of 100 to 300 rows, most are new.
RECENT_ROWS = 200


class ConceptDrift(BaseModel):
    """One detection: the error rate rose from ``before`` (the rows ADWIN cut off) to ``after`` (the latest
    ``RECENT_ROWS`` rows) around labelled row ``at_row``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    detection_id: int
    created_at: float
    detector: str = "adwin"
    metric: str  # error_rate, or scaled_abs_error (regression)
    before: float
    after: float
    at_row: int  # labelled rows this monitor had seen when it fired
    recent_rows: int  # rows in ADWIN's window after the cut: those that show the new rate
    reason: str


class Adwin:
    """ADWIN over values in [0, 1], fed in batches (see the module's docstring).

    Args:
    delta: the confidence (smaller: fewer false alarms, later detections).
    clock: rows between two checks for a cut.
    """

    MAX_WINDOW = 1 << 15
    MAX_BUCKETS = 5
    MIN_LENGTH = 5  # rows each side of a cut at least
    GRACE = 10  # rows before the first check

    def __init__(self, delta: float = 0.002, *, clock: int = 32) -> None:
        self.delta, self.clock = delta, clock
        cap = 2 * self.MAX_WINDOW + 4096
        self._x = np.zeros(cap)
        self._sum = np.zeros(cap + 1)  # _sum[i]: the sum of _x[:i] (and _sq of their squares)
        self._sq = np.zeros(cap + 1)
        self._start = self._end = 0  # the window is _x[_start:_end]
        self._next_check = clock
        self.seen = 0
        # Where a cut may fall, as the rows after it: what river's histogram of buckets (MAX_BUCKETS of each
        # size 1, 2, 4, ...) offers from the newest row back.
        sizes = np.repeat(2 ** np.arange(16), self.MAX_BUCKETS)
        self._cuts = np.cumsum(sizes)[np.cumsum(sizes) < self.MAX_WINDOW]

    @property
    def width(self) -> int:
        return self._end - self._start

    def _append(self, values: np.ndarray) -> None:
        if self._end + len(values) > len(self._x):  # move the window to the front (amortized: once per MAX_WINDOW rows)
            keep = slice(self._start, self._end)
            n = self._end - self._start
            self._x[:n] = self._x[keep]
            self._sum[: n + 1] = self._sum[self._start:self._end + 1] - self._sum[self._start]
            self._sq[: n + 1] = self._sq[self._start:self._end + 1] - self._sq[self._start]
            self._start, self._end = 0, n
        e, k = self._end, len(values)
        self._x[e:e + k] = values
        self._sum[e + 1:e + k + 1] = self._sum[e] + np.cumsum(values)
        self._sq[e + 1:e + k + 1] = self._sq[e] + np.cumsum(values * values)
        self._end += k
        self._start = max(self._start, self._end - self.MAX_WINDOW)

    def update(self, values: np.ndarray) -> list[tuple[int, float, float]]:
        """Feed values in order; each cut found: (rows seen when it was found, the mean of the rows it dropped,
        the mean of the window it kept)."""
        found = []
        step = len(self._x) // 4
        for i in range(0, len(values), step):  # a huge batch in pieces the buffer holds
            piece = values[i:i + step]
            base = self.seen
            self._append(piece)
            self.seen += len(piece)
            end0 = self._end - len(piece)  # where this piece begins in the buffer
            while self._next_check <= self.seen:
                # The piece's checks at once while none would cut (the usual case); one at a time from the first
                # that would (a cut moves the window's start, which the later checks depend on).
                checks = np.arange(self._next_check, self.seen + 1, self.clock)
                first = self._first_cut(end0 + (checks - base))
                if first is None:
                    self._next_check = int(checks[-1]) + self.clock
                    break
                self._next_check = int(checks[first])
                t = end0 + (self._next_check - base)
                cut = self._check(t)
                if cut is not None:
                    found.append((self._next_check, *cut))
                self._next_check += self.clock
        return found

    def _first_cut(self, ts: np.ndarray) -> int | None:
        """Of the checks of windows ending at buffer positions ``ts`` (all from the current start), the first
        that finds a significant cut, or None."""
        rows = np.flatnonzero(self._hits(ts).any(axis=1))
        return int(rows[0]) if len(rows) else None

    def _hits(self, ts: np.ndarray) -> np.ndarray:
        """(checks, cuts): where the window from the current start to each of ``ts`` has a significant cut
        ``self._cuts[j]`` rows from its end (river's bound: Bernstein with the window's variance)."""
        width = (ts - self._start).astype(np.float64)[:, None]  # (checks, 1)
        n1 = self._cuts[None, :].astype(np.float64)  # (1, cuts)
        valid = (n1 >= self.MIN_LENGTH) & (n1 <= width - self.MIN_LENGTH) & (width > self.GRACE)
        if not valid.any():
            return valid
        s, q = self._sum, self._sq
        total = (s[ts] - s[self._start])[:, None]
        variance = np.maximum((q[ts] - q[self._start])[:, None] / width - (total / width) ** 2, 0.0)
        back = np.clip(ts[:, None] - self._cuts[None, :], self._start, None)
        u1 = s[ts][:, None] - s[back]
        n0 = width - n1
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.abs((total - u1) / n0 - u1 / n1)
            m = 1.0 / (n0 - self.MIN_LENGTH + 1) + 1.0 / (n1 - self.MIN_LENGTH + 1)
            d = np.log(2 * np.log(np.maximum(width, 2.0)) / self.delta)
            return valid & (gap > np.sqrt(2 * m * variance * d) + 2.0 / 3.0 * d * m)

    def export_state(self) -> dict[str, Any]:
        """The window and the count of rows read (JSON-ready): a restarted monitor keeps its error stream."""
        return {"window": self._x[self._start:self._end].tolist(), "seen": self.seen, "next_check": self._next_check}

    def import_state(self, state: dict[str, Any]) -> None:
        window = np.asarray(state["window"], dtype=np.float64)[-self.MAX_WINDOW:]
        self._start = self._end = 0
        self._append(window)
        self.seen, self._next_check = int(state["seen"]), int(state["next_check"])

    def _check(self, t: int) -> tuple[float, float] | None:
        """Test the window ending at buffer position ``t``; on a cut, drop its old part: (old mean, kept mean)."""
        start0 = self._start
        for _ in range(64):
            significant = np.flatnonzero(self._hits(np.array([t]))[0])
            if not len(significant):
                break
            self._start = t - int(self._cuts[significant[-1]])  # the largest kept part: the oldest significant cut
        if self._start == start0:
            return None
        dropped = self._start - start0
        old = (self._sum[self._start] - self._sum[start0]) / dropped
        kept = (self._sum[t] - self._sum[self._start]) / (t - self._start)
        return float(old), float(kept)


class ErrorStreamDetector:
    """Args:
    task: binary, multiclass or regression.
    delta: ADWIN's confidence (smaller: fewer false alarms, later detections).
    baseline_rmse: regression: the scale the absolute errors are divided by (three times it).
    """

    def __init__(self, task: str, *, delta: float = 0.002, baseline_rmse: float | None = None) -> None:
        self.task, self.delta = task, delta
        self.metric = "scaled_abs_error" if task == "regression" else "error_rate"
        self._scale = 3 * baseline_rmse if baseline_rmse and baseline_rmse > 0 else 1.0
        self._adwin = Adwin(delta)
        self._recent = np.zeros(0)  # the latest RECENT_ROWS values
        self.rows = 0

    def error_of(self, correct: bool | None, abs_error: float | None = None) -> float:
        if self.task == "regression":
            return min(float(abs_error or 0.0) / self._scale, 1.0)
        return 0.0 if correct else 1.0

    def errors_of(self, correct: np.ndarray, abs_error: np.ndarray) -> np.ndarray:
        """``error_of`` for arrays of rows."""
        if self.task == "regression":
            return np.minimum(np.asarray(abs_error, dtype=np.float64) / self._scale, 1.0)
        return 1.0 - np.asarray(correct, dtype=np.float64)

    def export_state(self) -> dict[str, Any]:
        """What a restarted monitor needs to go on reading the stream where it was (JSON-ready)."""
        return {"adwin": self._adwin.export_state(), "recent": self._recent.tolist(), "rows": self.rows}

    def import_state(self, state: dict[str, Any]) -> None:
        self._adwin.import_state(state["adwin"])
        self._recent = np.asarray(state["recent"], dtype=np.float64)[-RECENT_ROWS:]
        self.rows = int(state["rows"])

    def update(self, errors: Iterable[float] | np.ndarray) -> list[dict[str, Any]]:
        """Feed per-row errors (non-finite ones are skipped); each rise detected: ``{before, after, at_row,
        recent_rows}``."""
        values = np.asarray(errors if isinstance(errors, np.ndarray) else list(errors), dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if not len(values):
            return []
        first = self.rows
        cuts = self._adwin.update(values)
        self.rows += len(values)
        found = []
        for at_row, old, kept in cuts:
            # The latest RECENT_ROWS rows up to the one the cut was found at.
            upto = at_row - first
            recent = np.concatenate([self._recent, values[:upto]])[-RECENT_ROWS:]
            after = float(recent.mean())
            if kept > old:
                found.append({"before": old, "after": after, "at_row": int(at_row), "recent_rows": len(recent)})
        self._recent = np.concatenate([self._recent, values])[-RECENT_ROWS:]
        return found
