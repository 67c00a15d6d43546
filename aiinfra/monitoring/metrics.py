"""The drift monitors' metrics through ``ray.util.metrics``: on the cluster's Prometheus endpoints and the dashboard."""

from __future__ import annotations

from collections.abc import Sequence

from ray.util.metrics import Counter, Gauge

from aiinfra.monitoring.concept import ConceptDrift
from aiinfra.monitoring.core import DriftReport, EstimateCheck

__all__ = ["RayMonitorMetrics"]


class RayMonitorMetrics:
    """``MonitorMetrics`` for a monitor actor (the names are those of clusters/grafana/aiinfra_monitoring.json)."""

    def __init__(self) -> None:
        self._perf = Gauge("aiinfra_performance", "rolling metric on labelled production traffic",
                           tag_keys=("model", "metric"))
        self._windows = Counter("aiinfra_monitor_windows", "closed drift windows by status", tag_keys=("model", "status"))
        self._share = Gauge("aiinfra_drift_share", "share of features drifted in the latest window", tag_keys=("model",))
        self._stat = Gauge("aiinfra_drift_statistic", "per-feature drift statistic of the latest window",
                           tag_keys=("model", "feature"))
        self._psi = Gauge("aiinfra_drift_psi", "per-feature PSI of the latest window", tag_keys=("model", "feature"))
        self._rows = Counter("aiinfra_monitor_rows", "served rows received by the monitor", tag_keys=("model",))
        self._concept = Counter("aiinfra_concept_drift", "concept drift found on the error stream (ADWIN)",
                                tag_keys=("model",))
        self._refused = Counter("aiinfra_monitor_refused", "what the monitor would not take from a client: rows past "
                                "one token's share of a window, labels for another token's requests",
                                tag_keys=("model", "what"))
        self._estimated = Gauge("aiinfra_estimated_performance", "the latest window's estimated metric (CBPE, no labels)",
                                tag_keys=("model", "metric"))
        self._estimation_error = Gauge("aiinfra_estimation_error",
                                       "|estimated - realised| of the latest window with labels", tag_keys=("model", "metric"))

    def windows(self, model: str, reports: Sequence[DriftReport]) -> None:
        for r in reports:
            self._windows.inc(1, tags={"model": model, "status": r.status})
            if r.result is None:
                continue
            for metric, e in (r.estimate.metrics.items() if r.estimate is not None else ()):
                self._estimated.set(e.value, tags={"model": model, "metric": metric})
            self._share.set(r.result.share_drifted, tags={"model": model})
            for f in r.result.features:
                self._stat.set(f.statistic, tags={"model": model, "feature": f.feature})
                if f.psi is not None:
                    self._psi.set(f.psi, tags={"model": model, "feature": f.feature})

    def rows(self, model: str, n: int) -> None:
        if n:
            self._rows.inc(n, tags={"model": model})

    def performance(self, model: str, metrics: dict[str, float]) -> None:
        for metric, value in metrics.items():
            self._perf.set(value, tags={"model": model, "metric": metric})

    def estimates(self, model: str, checks: Sequence[EstimateCheck]) -> None:
        checked = next((c for c in checks if c.error), None)  # newest first
        for metric, err in (checked.error.items() if checked else ()):
            self._estimation_error.set(err, tags={"model": model, "metric": metric})

    def concept(self, model: str, reports: Sequence[ConceptDrift]) -> None:
        if reports:
            self._concept.inc(len(reports), tags={"model": model})

    def refused(self, model: str, what: str, n: int) -> None:
        if n:
            self._refused.inc(n, tags={"model": model, "what": what})
