"""Drift monitoring: is what a model serves still like what it was trained on?

``detectors`` holds the statistics (alibi-detect's tests plus PSI), ``core`` the monitor that
collects served rows into windows, tests each one and stores a ``DriftReport`` per window.
No Ray here, and nothing imports alibi-detect until a detector is built.
"""

from aiinfra.monitoring.core import DriftMonitor, DriftReport, MonitorSettings
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
    "MonitorSettings",
    "detect_drift",
    "population_stability_index",
]
