"""Served requests, sampled to the model's drift monitor without ever slowing or failing a response.

``offer`` only appends to a buffer bounded by rows and by bytes (rows past either bound are dropped
and counted, by which bound); a background thread ships what has accumulated every ``interval_s`` with one call. A
failing or slow monitor costs the response nothing: errors are counted and logged, and at most
one shipment is in flight (the next waits for the previous to settle, so nothing piles up).

Each row carries the version that answered it, and failed requests are counted per version, so
the monitor can compare a canary's arms on the same traffic.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from aiinfra.inference.columns import Columns, Runs, plain, to_columns
from aiinfra.monitoring.sizes import approx_bytes

__all__ = ["MonitorSampler"]

log = logging.getLogger("aiinfra.serving")


class MonitorSampler:
    """Args:
    send: ships ``(rows, scores, request_ids, labels, versions, errors, tokens)``, ``errors`` being failed
        requests per version since the last shipment, ``tokens`` the API token id of each row's request;
        blocking is fine (it runs on the sampler's thread).
    rate: the share of requests sampled (0 to 1).
    capacity: rows held at most between shipments.
    max_bytes: bytes those rows may take at most (``approx_bytes``): wide rows hit this before ``capacity``.
    """

    def __init__(self, send: Callable[..., Any], *, rate: float = 1.0,
                 capacity: int = 50_000, max_bytes: int = 64 * 2**20, interval_s: float = 1.0,
                 max_rows_per_send: int = 10_000, start: bool = True) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self._send = send
        self.rate = rate
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._bytes = 0
        self._rows = 0
        self._dropped_logged = 0
        self.interval_s = interval_s
        self.max_rows_per_send = max_rows_per_send
        # One entry per request, its rows as they came (rows of a request are not copied one by one):
        # (rows, scores, request id, predicted labels or None, version, token, bytes, class probabilities or None).
        self._buffer: deque[tuple[Sequence[Mapping[str, Any]], list[float], str, list[Any] | None, int | None,
                                  str | None, int, list[Any] | None]] = deque()
        self._errors: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # dropped: rows over either bound (dropped_bytes: of those, the ones the byte bound refused).
        self.counts = {"offered": 0, "sampled": 0, "dropped": 0, "dropped_bytes": 0, "sent": 0, "send_errors": 0}
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="monitor-sampler", daemon=True)
            self._thread.start()

    def offer(self, rows: Sequence[Mapping[str, Any]], scores: Sequence[float], request_id: str,
              labels: Sequence[Any] | None = None, version: int | None = None, token: str | None = None,
              probabilities: Sequence[Sequence[float]] | None = None) -> None:
        """Never raises, never blocks on the monitor. ``labels``: the predicted labels, if any; ``token``: the
        id of the API token the request was made with (who may label it); ``probabilities``: a multiclass
        model's every class's probability per row (the monitor's performance estimate reads them)."""
        self.counts["offered"] += len(rows)
        if self.rate < 1.0 and random.random() >= self.rate:
            return
        with self._lock:
            take = max(0, min(self.capacity - self._rows, len(rows), len(scores)))
            # A request's rows have the same fields: sized by its first (approx_bytes costs microseconds a row).
            size = approx_bytes(rows[0]) if take else 0
            kept = take if size == 0 else max(0, min(take, (self.max_bytes - self._bytes) // size))
            self.counts["dropped_bytes"] += take - kept
            if kept:
                part = rows[:kept] if isinstance(rows, Columns) else list(rows[:kept])
                self._buffer.append((part, [float(v) for v in scores[:kept]], request_id,
                                     None if labels is None else list(labels[:kept]), version, token, size * kept,
                                     None if probabilities is None else list(probabilities[:kept])))
                self._bytes += size * kept
                self._rows += kept
            self.counts["sampled"] += kept
            self.counts["dropped"] += len(rows) - kept

    def offer_error(self, version: int) -> None:
        """A request that ``version`` failed to answer (a server error), sampled at the same rate."""
        if self.rate < 1.0 and random.random() >= self.rate:
            return
        with self._lock:
            self._errors[version] = self._errors.get(version, 0) + 1

    def flush(self) -> int:
        """Ship what is buffered now, whole requests up to ``max_rows_per_send`` rows (the thread does this every
        ``interval_s``); rows shipped."""
        with self._lock:
            items, n = [], 0
            while self._buffer and (not items or n + len(self._buffer[0][0]) <= self.max_rows_per_send):
                item = self._buffer.popleft()
                items.append(item)
                n += len(item[0])
            self._bytes -= sum(i[6] for i in items)
            self._rows -= n
            errors, self._errors = self._errors, {}
        dropped = self.counts["dropped"]
        if dropped > self._dropped_logged:  # said once per shipment at most, with the running totals
            log.warning("monitor sampling dropped %d rows since the last shipment (%d in all, %d by the %d-byte bound): "
                        "the monitor is slower than the traffic; lower monitoring.sample_rate",
                        dropped - self._dropped_logged, dropped, self.counts["dropped_bytes"], self.max_bytes)
            self._dropped_logged = dropped
        if not items and not errors:
            return 0
        try:
            probabilities = _probabilities(items)
            self._send(*_shipment(items), errors, Runs([i[5] for i in items], [len(i[0]) for i in items]),
                       **({} if probabilities is None else {"probabilities": probabilities}))
            self.counts["sent"] += n
        except Exception:  # noqa: BLE001 - monitoring must never hurt serving
            self.counts["send_errors"] += 1
            log.warning("could not send %d sampled rows to the monitor; they are dropped", n, exc_info=True)
        return n

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            while self.flush() >= self.max_rows_per_send:
                pass

    def stats(self) -> dict[str, Any]:
        """The counters, and what the buffer holds now (rows, approximate bytes) against its bounds."""
        with self._lock:
            return {**self.counts, "buffered_rows": len(self._buffer), "buffered_bytes": self._bytes,
                    "capacity": self.capacity, "max_bytes": self.max_bytes}

    def close(self) -> None:
        self._stop.set()


def _shipment(items: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Buffered requests as one shipment: the rows column by column when they share their fields (the usual
    case: far cheaper to ship and to read), the scores as one array, and what is per request (id, version)
    once per request (``Runs``): Ray pickles a list value by value, an array as its buffer."""
    lengths = [len(i[0]) for i in items]
    parts = [i[0] for i in items]
    if parts and all(isinstance(p, Columns) for p in parts) and all(
            p.columns.keys() == parts[0].columns.keys() for p in parts):  # type: ignore[attr-defined]
        rows: Any = Columns.concat(parts)  # type: ignore[arg-type]
    else:
        flat = [r for p in parts for r in p]
        rows = to_columns(flat) or [plain(r) for r in flat]
    scores = np.fromiter(chain.from_iterable(i[1] for i in items), dtype=np.float64, count=sum(lengths))
    labels: Any = None
    if any(i[3] is not None for i in items):
        labels = [v for i in items for v in (i[3] if i[3] is not None else [None] * len(i[0]))]
        if all(type(v) is int for v in labels):
            labels = np.asarray(labels, dtype=np.int64)
    ids = Runs([i[2] for i in items], lengths)
    versions = Runs([i[4] for i in items], lengths)
    return rows, scores, ids, labels, versions


def _probabilities(items: Sequence[tuple[Any, ...]]) -> np.ndarray | None:
    """Every row's class probabilities as one (rows, classes) array, when every request came with them (else None:
    the monitor then estimates from the top class's probability alone)."""
    if not items or any(i[7] is None for i in items):
        return None
    try:
        out = np.asarray([p for i in items for p in i[7]], dtype=np.float64)
    except (TypeError, ValueError):  # ragged: not one model's classes
        return None
    return out if out.ndim == 2 and len(out) == sum(len(i[0]) for i in items) else None
