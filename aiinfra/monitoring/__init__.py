"""Drift monitoring: is what a model serves still like what it was trained on?

``detectors`` holds the statistics (alibi-detect's tests plus PSI), ``core`` the monitor that
collects served rows into windows, tests each one and stores a ``DriftReport`` per window,
``service`` the whole per-model monitor the ``monitor:<model>`` actor hosts, ``client`` its typed
client. Nothing imports alibi-detect until a detector is built; only ``metrics`` imports Ray.
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
