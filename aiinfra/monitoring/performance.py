"""Performance monitoring: ground-truth labels from ``/feedback`` joined to the served predictions.

Predictions are held by request id (bounded: the oldest are forgotten first) until their label
arrives, however late; then they join a rolling window of the most recent labelled predictions,
whose accuracy / ROC-AUC (classification) or RMSE / MAE (regression) is compared with the model's
evaluation baseline (the metrics it was registered with). Feedback for an unknown or forgotten
request id is counted and ignored; a label that does not fit the model is counted as invalid.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PerformanceTracker"]


class PerformanceTracker:
    """Args:
    task: binary, multiclass or regression.
    class_labels: the model's labels (index i is class i); empty for regression.
    baseline: the model's evaluation metrics (``accuracy``, ``roc_auc``, ``rmse``, ...).
    window: how many of the latest labelled predictions the rolling metrics cover.
    max_pending: predictions held while waiting for labels.
    """

    def __init__(self, task: str, class_labels: Sequence[Any], baseline: Mapping[str, float], *, window: int = 500,
                 max_pending: int = 100_000) -> None:
        self.task = task
        self.class_labels = list(class_labels)
        self._index = {str(v): i for i, v in enumerate(self.class_labels)}
        self.baseline = {k: float(v) for k, v in baseline.items()}
        self.window = window
        self.max_pending = max_pending
        self._pending: OrderedDict[str, list[float]] = OrderedDict()
        self._labelled: deque[tuple[float, float]] = deque(maxlen=window)  # (score or prediction, truth)
        self.counts = {"recorded": 0, "forgotten": 0, "matched": 0, "unknown": 0, "invalid": 0}

    def record(self, request_ids: Sequence[str], scores: Sequence[float], predicted: Sequence[Any] | None = None) -> None:
        """Served rows in order: consecutive rows with the same request id form one request."""
        for i, (rid, score) in enumerate(zip(request_ids, scores)):
            value = float(score)
            if self.task == "multiclass" and predicted is not None:
                value = float(self._index.get(str(predicted[i]), -1))
            self._pending.setdefault(str(rid), []).append(value)
            self.counts["recorded"] += 1
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.counts["forgotten"] += 1

    def _truth(self, label: Any) -> float | None:
        if self.task == "regression":
            try:
                value = float(label)
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
        index = self._index.get(str(label))
        return None if index is None else float(index)

    def feedback(self, items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Each item ``{"request_id": ..., "label": ...}`` (``labels``: one per row of that request)."""
        out = {"matched": 0, "unknown": 0, "invalid": 0}
        for item in items:
            rid = str(item.get("request_id"))
            served = self._pending.get(rid)
            if served is None:
                out["unknown"] += 1
                continue
            labels = item.get("labels", [item.get("label")] * len(served) if "label" in item else None)
            if not isinstance(labels, list) or len(labels) != len(served):
                out["invalid"] += 1
                continue
            truths = [self._truth(v) for v in labels]
            if any(t is None for t in truths):
                out["invalid"] += 1
                continue
            del self._pending[rid]
            for score, truth in zip(served, truths):
                self._labelled.append((score, truth))  # type: ignore[arg-type]
            out["matched"] += 1
        for k, v in out.items():
            self.counts[k] += v
        return out

    def snapshot(self) -> dict[str, Any]:
        """Rolling metrics over the latest labelled predictions, against the baseline."""
        metrics: dict[str, float] = {}
        if self._labelled:
            scores = np.array([s for s, _ in self._labelled])
            truth = np.array([t for _, t in self._labelled])
            if self.task == "binary":
                metrics["accuracy"] = float(np.mean((scores >= 0.5) == (truth == 1)))
                if len(set(truth.tolist())) == 2:
                    from sklearn.metrics import roc_auc_score

                    metrics["roc_auc"] = float(roc_auc_score(truth, scores))
            elif self.task == "multiclass":
                metrics["accuracy"] = float(np.mean(scores == truth))
            else:
                err = scores - truth
                metrics["rmse"] = float(np.sqrt(np.mean(err**2)))
                metrics["mae"] = float(np.mean(np.abs(err)))
        delta = {k: v - self.baseline[k] for k, v in metrics.items() if k in self.baseline}
        return {"labelled": len(self._labelled), "pending": len(self._pending), "metrics": metrics,
                "baseline": {k: self.baseline[k] for k in metrics if k in self.baseline}, "delta": delta,
                "counts": dict(self.counts)}
