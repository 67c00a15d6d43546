"""Drift monitoring: is what a model serves still like what it was trained on, and is it still right?

``detectors`` holds the window tests (``statistics``: KS / chi-squared on scipy by default, alibi-detect
opt-in; ``multivariate``: MMD on all inputs), ``estimation`` performance before labels (CBPE),
``concept`` concept drift on the error stream (ADWIN), ``profile`` the reference registered with each
version, ``core`` the monitor that collects served rows into windows and stores a ``DriftReport`` per
window, ``service`` the whole per-model monitor the ``monitor:<model>`` actor hosts, ``client`` its typed
client. Heavy imports (scipy, scikit-learn, river, alibi-detect) happen where they are used, so a serving
replica importing the client pays for none of them; only ``metrics`` imports Ray.
"""

from aiinfra.monitoring.core import DriftMonitor, DriftReport
from aiinfra.monitoring.detectors import (
    DriftDetector,
    DriftResult,
    FeatureDrift,
    detect_drift,
    population_stability_index,
)

__all__ = [
    "DriftDetector",
    "DriftMonitor",
    "DriftReport",
    "DriftResult",
    "FeatureDrift",
    "detect_drift",
    "population_stability_index",
]
