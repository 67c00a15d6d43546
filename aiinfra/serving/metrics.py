"""Inference metrics through ray.util.metrics, so they reach the cluster's Prometheus endpoint
(and the Ray dashboard) as ``ray_aiinfra_*``.

Created lazily, once per replica process: a metric object is cheap to record into but must
live in the process that records.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["record_request"]

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


@functools.lru_cache(maxsize=1)
def _metrics() -> dict[str, Any]:
    from ray.util.metrics import Counter, Histogram

    tags = ("model", "version", "route", "status")
    return {
        "requests": Counter("aiinfra_requests", "inference requests by model, version, route and status", tag_keys=tags),
        "errors": Counter("aiinfra_request_errors", "inference requests answered with a 4xx or 5xx", tag_keys=tags),
        "latency": Histogram("aiinfra_request_latency_ms", "inference request latency in ms",
                             boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "version", "route")),
        "rows": Counter("aiinfra_predicted_rows", "rows predicted by model and version", tag_keys=("model", "version")),
    }


def record_request(*, model: str, version: str, route: str, status: int, latency_ms: float, rows: int = 0) -> None:
    m = _metrics()
    tags = {"model": model, "version": version, "route": route, "status": str(status)}
    m["requests"].inc(1, tags=tags)
    if status >= 400:
        m["errors"].inc(1, tags=tags)
    m["latency"].observe(latency_ms, tags={"model": model, "version": version, "route": route})
    if rows:
        m["rows"].inc(rows, tags={"model": model, "version": version})
