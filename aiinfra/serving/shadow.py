"""Shadow traffic: a share of requests mirrored to another version, whose answers are compared and never returned.

The mirrored call runs on one background thread after the response has its answer; a bounded queue
means a slow shadow costs the caller nothing (mirrors beyond it are skipped and counted). The
comparison is by row: the same label (classification) or the absolute difference of values and
probabilities.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ShadowComparer", "compare_predictions"]

log = logging.getLogger("aiinfra.serving")


def compare_predictions(primary: Sequence[Mapping[str, Any]], shadow: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Rows compared, rows with the same label, and the largest score difference."""
    same, max_diff = 0, 0.0
    for a, b in zip(primary, shadow):
        if a.get("label", a.get("value")) == b.get("label", b.get("value")):
            same += 1
        for key in ("probability", "value"):
            if key in a and key in b:
                max_diff = max(max_diff, abs(float(a[key]) - float(b[key])))
    return {"rows": float(len(primary)), "same": float(same), "max_diff": max_diff}


_STOP: Any = object()


class ShadowComparer:
    def __init__(self, capacity: int = 64, on_result: Any = None) -> None:
        self._queue: queue.Queue[tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]] = queue.Queue(maxsize=capacity)
        self._on_result = on_result
        self.stats = {"mirrored": 0, "skipped": 0, "errors": 0, "rows": 0, "same": 0, "max_diff": 0.0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def mirror(self, shadow: Any, rows: list[dict[str, Any]], primary: list[dict[str, Any]]) -> None:
        """Never blocks: a full queue skips this mirror."""
        try:
            self._queue.put_nowait((shadow, rows, primary))
        except queue.Full:
            with self._lock:
                self.stats["skipped"] += 1

    def close(self) -> None:
        """End the comparing thread once what is queued is done (a router stopped: its model was removed)."""
        self._queue.put(_STOP)  # blocks only while the queue is full, for at most one comparison's time

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            shadow, rows, primary = item
            try:
                result = compare_predictions(primary, shadow.predict(rows))
            except Exception:  # noqa: BLE001 - a failing shadow is reported, never raised
                with self._lock:
                    self.stats["errors"] += 1
                log.warning("shadow %s failed on a mirrored request", getattr(shadow, "version", "?"), exc_info=True)
                continue
            with self._lock:
                self.stats["mirrored"] += 1
                self.stats["rows"] += int(result["rows"])
                self.stats["same"] += int(result["same"])
                self.stats["max_diff"] = max(self.stats["max_diff"], result["max_diff"])
            if self._on_result is not None:
                self._on_result(shadow, result)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            s = dict(self.stats)
        s["agreement"] = s["same"] / s["rows"] if s["rows"] else None
        return s

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until the queued mirrors are done (tests)."""
        import time

        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
