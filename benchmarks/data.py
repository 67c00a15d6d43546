"""Ingestion gate throughput: validate, hash, profile and write N rows, on Ray Data against one process.

Both sides do the same work on the same Parquet input: ``process_batch`` (pyarrow.compute
validation against the spec, quarantine split, content hashing, partial profile, Parquet
writes) over 65,536-row batches. The baseline calls it in a loop in this process; the gate
runs it as Ray Data ``map_batches`` tasks. A third line times validation alone in one process
(``validate_batch``), the floor of the work. Target: gate throughput at least 0.4 of the
single-process run, on 2 cores.

    .venv/bin/python benchmarks/data.py [--rows 5000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000)
    args = parser.parse_args()

    import ray

    from aiinfra.config import load_config
    from aiinfra.data.spec import load_spec
    from aiinfra.data.synthetic import make_customers
    from aiinfra.data.validation import validate_batch
    from aiinfra.demo.configs import example_config
    from aiinfra.pipelines.ingest import BATCH_ROWS, ingest, process_batch

    work = Path(tempfile.mkdtemp(prefix="aiinfra-bench-data-"))
    # The example spec without its key: uniqueness is a separate pass; see notes.
    spec = load_spec(example_config("customers_spec.yaml")).model_copy(update={"key": []})
    print(f"generating {args.rows:,} rows ...", flush=True)
    src = work / "in"
    src.mkdir()
    per_file = 1_000_000
    for i, start in enumerate(range(0, args.rows, per_file)):
        n = min(per_file, args.rows - start)
        make_customers(n, seed=i).to_parquet(src / f"part-{i:03d}.parquet", index=False, row_group_size=BATCH_ROWS)

    results = {}
    print("validation only, one process ...", flush=True)
    t0 = time.perf_counter()
    rows = 0
    for f in sorted(src.iterdir()):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS):
            import pyarrow as pa

            rows += validate_batch(pa.Table.from_batches([batch]), spec).good.num_rows
    results["validate_batch only, 1 process"] = rows / (time.perf_counter() - t0)

    print("full gate work, one process (baseline) ...", flush=True)
    t0 = time.perf_counter()
    for f in sorted(src.iterdir()):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS):
            import pyarrow as pa

            process_batch(pa.Table.from_batches([batch]), storage_root=str(work / "lake1"), staging="staging/x", spec=spec)
    results["gate work, 1 process (baseline)"] = args.rows / (time.perf_counter() - t0)

    print("the gate on Ray Data (2 cores) ...", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = load_config(environ={}, home=str(work / "home"))
        t0 = time.perf_counter()
        r = ingest(config, "bench", str(src), spec=spec)
        elapsed = time.perf_counter() - t0
        assert r.version.row_count == args.rows
        results["ingest on Ray Data, end to end"] = args.rows / elapsed
    finally:
        ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}; "
          f"date: {time.strftime('%Y-%m-%d')}; {args.rows:,} rows, 8 columns, batch {BATCH_ROWS:,}\n")
    print("| run | rows/s |")
    print("| --- | ---: |")
    for name, rate in results.items():
        print(f"| {name} | {rate:,.0f} |")
    ratio = results["ingest on Ray Data, end to end"] / results["gate work, 1 process (baseline)"]
    print(f"\ngate on Ray Data / same work in one process: {ratio:.2f} (target >= 0.4)")


if __name__ == "__main__":
    main()
