"""The one number per answer whose distribution prediction drift tracks.

Both sides of the comparison need it: serving, on the answers it samples for the monitor, and the
monitor's reference, on the model's answers to its training rows; so it lives below both.
"""

from __future__ import annotations

from typing import Any

__all__ = ["score_of"]


def score_of(prediction: dict[str, Any]) -> float:
    """A classifier's probability, else a regressor's value."""
    if "probability" in prediction:
        return float(prediction["probability"])
    return float(prediction.get("value", 0.0))
