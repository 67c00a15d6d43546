"""A line per stage with its timing, so a user never waits in silence."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class StageLog:
    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.out = out or sys.stdout
        self.started = time.monotonic()
        self.timeline: list[dict[str, object]] = []

    def note(self, message: str) -> None:
        print(f"      {message}", file=self.out, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {name} ...", file=self.out, flush=True)
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            print(f"[{self.done}/{self.total}] {name} FAILED after {time.monotonic() - t0:.1f}s", file=self.out, flush=True)
            raise
        elapsed = time.monotonic() - t0
        self.timeline.append({"stage": name, "seconds": round(elapsed, 2), "at": round(time.monotonic() - self.started, 2),
                              "ended_at": time.time()})
        print(f"[{self.done}/{self.total}] {name} done in {elapsed:.1f}s", file=self.out, flush=True)
