"""``/feedback`` from many concurrent requests, to the monitor in as few calls as the monitor can take.

Group commit: the first request to arrive sends its items at once (no added latency when traffic is
light); requests arriving while that call is in flight queue up, and when it returns, the next
sender takes every queued request's items (up to ``max_items``) in one call. Under load a replica
thus makes one monitor call per round trip, however many requests it answers meanwhile, and at most
one per ``min_interval_s`` (a request arriving sooner after the last call waits out the rest of that
interval, with the others arriving meanwhile): a fast monitor would otherwise be called for nearly
every request, and each call costs it a few hundred microseconds of its own. Each request still gets its own counts: the monitor returns each item's outcome in order, and they are
split back per request.

Blocking by design: the router calls it off the event loop (``asyncio.to_thread``), as it did the
monitor before.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiinfra.monitoring.performance import OUTCOMES

__all__ = ["FeedbackBatcher"]



class _Ticket:
    __slots__ = ("done", "error", "items", "result")

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.done = False
        self.result: dict[str, int] | None = None
        self.error: BaseException | None = None


class FeedbackBatcher:
    """Args:
    send: one monitor call: ``send(items) -> {"outcomes": [...], ...}`` (``MonitorService.feedback``).
    max_items: the most items one call carries.
    min_interval_s: the least time between the starts of two calls (0: none).
    """

    def __init__(self, send: Callable[[list[dict[str, Any]]], Mapping[str, Any]], *, max_items: int = 5_000,
                 min_interval_s: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.max_items = max_items
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_call = float("-inf")
        self._queue: deque[_Ticket] = deque()
        self._cond = threading.Condition()
        self._sending = False
        self.calls = 0  # monitor calls made
        self.requests = 0  # requests they carried

    def submit(self, items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """This request's items; its counts once the call carrying them returned (the call's error, raised)."""
        ticket = _Ticket([dict(i) for i in items])
        with self._cond:
            self._queue.append(ticket)
            while not ticket.done:
                if self._sending:
                    self._cond.wait()
                    continue
                self._sending = True
                wait = self._last_call + self.min_interval_s - self._clock()
                if wait > 0:  # the last call was just now: gather what arrives until the interval is over
                    self._cond.release()
                    time.sleep(wait)
                    self._cond.acquire()
                batch = self._take()
                self._last_call = self._clock()
                self._cond.release()
                try:
                    self._carry(batch)
                finally:
                    self._cond.acquire()
                    self._sending = False
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.result is not None
        return ticket.result

    def _take(self) -> list[_Ticket]:
        batch, n = [], 0
        while self._queue and (not batch or n + len(self._queue[0].items) <= self.max_items):
            t = self._queue.popleft()
            batch.append(t)
            n += len(t.items)
        return batch

    def _carry(self, batch: list[_Ticket]) -> None:
        """One call for the batch; each ticket gets its own slice of the outcomes (or the call's error)."""
        items = [item for t in batch for item in t.items]
        try:
            reply = self._send(items)
            outcomes = list(reply.get("outcomes") or [])
            if len(outcomes) != len(items):
                raise RuntimeError(f"the monitor answered {len(outcomes)} outcomes for {len(items)} items")
        except BaseException as e:  # noqa: BLE001 - each waiting request raises it as its own
            for t in batch:
                t.error, t.done = e, True
            return
        finally:
            self.calls += 1
            self.requests += len(batch)
        start = 0
        for t in batch:
            mine = outcomes[start:start + len(t.items)]
            start += len(t.items)
            t.result = {k: mine.count(k) for k in OUTCOMES}
            t.done = True
