"""Shared timing helpers for the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds taken by each of ``n`` calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "mean_ms": statistics.fmean(ms),
        "n": len(ms),
    }


async def phased_load(call, clients: int, seconds: float, warmup_s: float) -> dict:
    """``clients`` concurrent loops of ``await call()`` (None when it succeeded, else an error key): after
    ``warmup_s``, ``seconds`` are measured; throughput, latency percentiles and the errors by key."""
    import asyncio

    latencies: list[float] = []
    errors: dict = {}
    phase = {"measure": False, "stop": False}

    async def client() -> None:
        while not phase["stop"]:
            t0 = time.perf_counter()
            error = await call()
            if phase["measure"]:
                if error is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[error] = errors.get(error, 0) + 1

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(warmup_s)
    phase["measure"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    phase["measure"] = False
    elapsed = time.perf_counter() - t0
    phase["stop"] = True
    await asyncio.gather(*tasks)
    return {"rps": len(latencies) / elapsed, "errors": errors, **percentiles(latencies)}
