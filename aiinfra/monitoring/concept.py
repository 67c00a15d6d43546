"""Concept drift on the error stream: the inputs look the same, the model is wrong more often.

When the relationship between inputs and label changes but the inputs do not, every input test stays
silent (and CBPE, which assumes that relationship holds, keeps estimating the old performance): the
only signal is the model's errors once labels arrive. ADWIN (Bifet and Gavalda, 2007; river's
implementation, BSD-3-Clause) keeps a window of the latest per-row errors and cuts it where two
sub-windows' means differ by more than a bound that holds with probability ``1 - delta``, so its
false alarms are bounded and its detection delay shrinks as the change grows.

The stream is one number per labelled row, in the order labels are joined: 1 for a wrong class and
0 for a right one (classification), or the absolute error over three times the baseline RMSE,
capped at 1 (regression: ADWIN's bound is for values in [0, 1]). Only a rise is concept drift; a
fall (the world got easier) is not reported.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["RECENT_ROWS", "ConceptDrift", "ErrorStreamDetector"]

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


class ErrorStreamDetector:
    """Args:
    task: binary, multiclass or regression.
    delta: ADWIN's confidence (smaller: fewer false alarms, later detections).
    baseline_rmse: regression: the scale the absolute errors are divided by (three times it).
    """

    def __init__(self, task: str, *, delta: float = 0.002, baseline_rmse: float | None = None) -> None:
        # Here, not at the top: river takes most of a second to import, and only a monitor with labels needs it.
        from river.drift import ADWIN

        self.task, self.delta = task, delta
        self.metric = "scaled_abs_error" if task == "regression" else "error_rate"
        self._scale = 3 * baseline_rmse if baseline_rmse and baseline_rmse > 0 else 1.0
        self._adwin = ADWIN(delta=delta)
        self._recent: deque[float] = deque(maxlen=RECENT_ROWS)
        self.rows = 0

    def error_of(self, correct: bool | None, abs_error: float | None = None) -> float:
        if self.task == "regression":
            return min(float(abs_error or 0.0) / self._scale, 1.0)
        return 0.0 if correct else 1.0

    def update(self, errors: Iterable[float]) -> list[dict[str, Any]]:
        """Feed per-row errors; each rise detected: ``{before, after, at_row, recent_rows}``."""
        found = []
        for value in errors:
            if not math.isfinite(value):
                continue
            width_before, mean_before = self._adwin.width, self._adwin.estimation
            self._adwin.update(float(value))
            self._recent.append(float(value))
            self.rows += 1
            if not self._adwin.drift_detected:
                continue
            # What was cut off is the old regime: its mean from the window's totals before and after the cut.
            width_after, mean_after = self._adwin.width, self._adwin.estimation
            total_before = mean_before * width_before + float(value)
            dropped = width_before + 1 - width_after
            old = (total_before - mean_after * width_after) / dropped if dropped > 0 else mean_before
            recent = sum(self._recent) / len(self._recent)
            if mean_after > old:
                found.append({"before": float(old), "after": float(recent), "at_row": self.rows,
                              "recent_rows": len(self._recent)})
        return found
