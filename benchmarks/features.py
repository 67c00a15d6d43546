"""Online feature lookups: p50/p99 of get_online_features for 1 and 100 entities, through the actor.

Baselines in the same run: the same lookup on the online store class in-process (no Ray), and
an empty actor call. Target: p99 at most 5 ms for one entity.

    .venv/bin/python benchmarks/features.py [--entities 100000] [--calls 3000]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time

import ray
from _timing import percentiles, timed


def pct(samples: list[float]) -> tuple[float, float]:
    p = percentiles(samples)
    return p["p50_ms"], p["p99_ms"]


@ray.remote(num_cpus=0)
class Empty:
    def ping(self, *args) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()

    from aiinfra.config import load_config
    from aiinfra.platform import connect, open_local

    home = tempfile.mkdtemp(prefix="aiinfra-bench-")
    config = load_config(environ={}, home=home)
    view = {"name": "usage", "entity": "customer_id", "timestamp": "ts", "features": [f"f{i}" for i in range(10)],
            "source": "usage"}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        p = connect(config)
        fs = p.features
        fs.register_view(view)
        print(f"loading {args.entities:,} entities x 10 features ...", flush=True)
        for start in range(0, args.entities, 20_000):
            rows = [{"customer_id": i, "ts": "2026-01-01", **{f"f{j}": float(i + j) for j in range(10)}}
                    for i in range(start, min(start + 20_000, args.entities))]
            fs.push("usage", rows)
        rng = random.Random(0)
        one = lambda: fs.get_online_features("usage", [rng.randrange(args.entities)])  # noqa: E731
        hundred = lambda: fs.get_online_features("usage", rng.sample(range(args.entities), 100))  # noqa: E731
        timed(one, 200)
        empty = Empty.remote()
        ray.get(empty.ping.remote())
        results = {
            "empty actor call (Ray floor)": pct(timed(lambda: ray.get(empty.ping.remote()), args.calls)),
            "1 entity via actor": pct(timed(one, args.calls)),
            "100 entities via actor": pct(timed(hundred, args.calls // 3)),
        }
        local = open_local(load_config(environ={}, home=home)).features
        results["1 entity in-process (baseline)"] = pct(timed(lambda: local.get_online_features("usage", [rng.randrange(args.entities)]), args.calls))
        results["100 entities in-process (baseline)"] = pct(timed(lambda: local.get_online_features("usage", rng.sample(range(args.entities), 100)), args.calls // 3))
    finally:
        ray.shutdown()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}; "
          f"date: {time.strftime('%Y-%m-%d')}; {args.entities:,} entities, 10 features each\n")
    print("| lookup | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    for name, (p50, p99) in results.items():
        print(f"| {name} | {p50:.3f} | {p99:.3f} |")
    p99 = results["1 entity via actor"][1]
    print(f"\none-entity p99 target 5 ms: {'met' if p99 <= 5 else 'MISSED'} ({p99:.2f} ms)")


if __name__ == "__main__":
    main()
