"""How much traffic one model's monitor takes in: sampled rows per second and feedback labels per second.

The plain ``MonitorService`` (what the ``monitor:<model>`` actor hosts) in this process, on SQLite, with a
registered reference profile (20 inputs) and the default detectors: this is the monitor's own capacity,
the ceiling under any transport (the actor call and the router's batching add their cost on top; the
router already ships its samples once a second per replica, one call each). No Ray.

- rows: ``observe`` calls of ``--batch`` rows with scores and request ids, column by column as a replica
  ships them, each row its own request (the costliest case for the join); every 1,000 rows a window closes
  and is tested (KS / chi-squared, MMD, CBPE) and stored, or with ``--min-window-seconds`` at most one
  window per that many seconds, on a uniform sample of 1,000 of its rows.
- labels: ``feedback`` calls of one label each (as ``/feedback`` sends them) and of 100, for rows already
  recorded; each joins the prediction, feeds the error stream (ADWIN) and updates the canary's arms.

Targets (issue 14): at least 20,000 rows/s and 5,000 labels/s on 2 cores.

    .venv/bin/python benchmarks/monitor_intake.py [--rows 50000] [--batch 500] [--min-window-seconds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_NUMERIC, N_CATEGORICAL = 15, 5


def make_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    data: dict[str, object] = {f"x{i}": rng.normal(0.0, 1.0, n) for i in range(N_NUMERIC)}
    for i in range(N_CATEGORICAL):
        data[f"c{i}"] = rng.choice(["a", "b", "c", "d"], size=n)
    return pd.DataFrame(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--labels", type=int, default=20_000)
    parser.add_argument("--min-window-seconds", type=float, default=0.0,
                        help="monitoring.min_window_seconds (0: a check every 1,000 rows)")
    args = parser.parse_args()

    from aiinfra.config import load_config
    from aiinfra.monitoring.profile import build_profile, write_profile
    from aiinfra.monitoring.service import MonitorService
    from aiinfra.registry.client import RegistryClient
    from aiinfra.registry.core import ModelRegistry
    from aiinfra.registry.types import FieldSpec
    from aiinfra.service import LocalBackend
    from aiinfra.storage import open_artifact_store, open_metadata_db

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(environ={}, home=str(Path(tmp) / "home"))
        config = config.model_copy(update={"monitoring": config.monitoring.model_copy(
            update={"min_window_seconds": args.min_window_seconds})})
        db = open_metadata_db(config.metadata_url, create=True)
        store = open_artifact_store(config.storage_root)
        registry = RegistryClient(LocalBackend(ModelRegistry(db, store)), store)
        inputs = [FieldSpec(name=f"x{i}", dtype="float64") for i in range(N_NUMERIC)]
        inputs += [FieldSpec(name=f"c{i}", dtype="string") for i in range(N_CATEGORICAL)]
        reference = make_rows(rng, 5000)
        p = 1 / (1 + np.exp(-reference["x0"].to_numpy()))
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "weights.bin").write_bytes(b"-")
        write_profile(build_profile(reference, inputs, task="binary", class_labels=[0, 1], outputs=p,
                                    labels=(rng.random(5000) < p).astype(np.int64), source="synthetic"), model_dir)
        version = registry.register("bench", model_dir, metrics={"accuracy": 0.7},
                                    signature={"inputs": [f.model_dump() for f in inputs],
                                               "outputs": [{"name": "probability", "dtype": "float64"}]},
                                    lineage={"dataset_version": "synthetic@1"})
        service = MonitorService(config, "bench", db=db, store=store, ticker=False)

        frame = make_rows(rng, args.rows)
        scores = (1 / (1 + np.exp(-frame["x0"].to_numpy()))).tolist()
        records = frame.to_dict(orient="records")
        from aiinfra.inference.columns import to_columns
        ids = [f"r{i}" for i in range(args.rows)]
        print(f"observe: {args.rows:,} rows in batches of {args.batch} ...", flush=True)
        windows = 0
        t0 = time.perf_counter()
        for start in range(0, args.rows, args.batch):
            end = start + args.batch
            # Column by column, as a replica's sampler ships rows that share their fields.
            windows += len(service.observe(to_columns(records[start:end]), scores[start:end], ids[start:end],
                                           [int(s >= 0.5) for s in scores[start:end]], [version.version] * (end - start)))
        rows_s = args.rows / (time.perf_counter() - t0)

        n = min(args.labels, args.rows)
        labels = (rng.random(n) < np.array(scores[:n])).astype(int).tolist()
        print(f"feedback: {n:,} labels one per call, then in calls of 100 ...", flush=True)
        half = n // 2
        t0 = time.perf_counter()
        for rid, y in zip(ids[:half], labels[:half]):
            service.feedback([{"request_id": rid, "label": y}])
        single_s = half / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(half, n, 100):
            service.feedback([{"request_id": r, "label": y} for r, y in zip(ids[start:start + 100], labels[start:start + 100])])
        batched_s = (n - half) / (time.perf_counter() - t0)
        status = service.status()
        db.close()

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"date: {time.strftime('%Y-%m-%d')}")
    print()
    print("| intake (plain MonitorService, SQLite, 20 inputs) | per second | target |")
    print("| --- | ---: | ---: |")
    print(f"| sampled rows, {args.batch} per call ({windows} windows of 1,000 tested and stored; min_window_seconds "
          f"{args.min_window_seconds:g}) | {rows_s:,.0f} | 20,000 |")
    print(f"| labels, 1 per feedback call | {single_s:,.0f} | 5,000 |")
    print(f"| labels, 100 per feedback call | {batched_s:,.0f} | |")
    print()
    print(f"labelled {status['performance']['labelled']} in the rolling window; estimation error "
          f"{status['estimation']['error']}; concept drift reports {len(status['concept']['reports'])}")


if __name__ == "__main__":
    main()
