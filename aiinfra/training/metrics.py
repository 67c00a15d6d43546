"""Which way is better, for every metric the platform computes: the one table of metric directions.

The offline evaluation (``aiinfra.training.evaluation``) emits these metrics, the promotion gate
compares candidates on them, the monitor's performance tracker computes some of them on labelled
traffic, and the autopilot's performance trigger turns the error metrics around. A metric added to
any of them is added here. Plain data, no dependencies, so every layer that compares metrics can read it.
"""

from __future__ import annotations

from typing import Literal

from aiinfra.errors import InvalidInput

__all__ = ["METRIC_DIRECTION", "Direction", "higher_is_better"]

Direction = Literal["max", "min"]

METRIC_DIRECTION: dict[str, Direction] = {
    "accuracy": "max",
    "precision": "max",
    "recall": "max",
    "f1": "max",
    "roc_auc": "max",
    "log_loss": "min",
    "ece": "min",  # calibration error
    "brier": "min",  # mean squared error of the probabilities
    "f1_macro": "max",
    "roc_auc_ovr": "max",
    "rmse": "min",
    "mae": "min",
    "r2": "max",
}


def higher_is_better(metric: str) -> bool:
    """True when a larger value of ``metric`` is better; InvalidInput for a metric the platform never computes."""
    try:
        return METRIC_DIRECTION[metric] == "max"
    except KeyError:
        known = ", ".join(sorted(METRIC_DIRECTION))
        raise InvalidInput(f"unknown metric {metric!r}; known metrics: {known}") from None
