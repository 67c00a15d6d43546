"""The dataset catalog's commit and lookup, against the way they worked before, in the same run.

    .venv/bin/python benchmarks/catalog.py [--files 20] [--mib 16] [--versions 200] [--root DIR]

- commit: staged files placed into a version by a move (a rename here, a server-side copy on S3), with the
  writing tasks' digests, against a copy through this process that hashes every byte again (the old commit);
- lookup: `get(NAME)` (the latest version) from the version index, against the full listing and every
  manifest read (the old lookup, still the path for a dataset written before the index).

No Ray; a local directory (`--root`, default a temporary one).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiinfra.data.catalog import INDEX, DatasetCatalog, DatasetVersion  # noqa: E402
from aiinfra.data.profile import DatasetProfile  # noqa: E402
from aiinfra.storage import open_artifact_store  # noqa: E402


def _manifest(name: str, version: str) -> DatasetVersion:
    return DatasetVersion(name=name, version=version, created_at=0.0, source_uri="file:///raw.csv", source_format="csv",
                          schema=[{"name": "a", "type": "int64"}], row_count=1, rows_in=1, quarantined_count=0,
                          files={}, profile=DatasetProfile(row_count=1, sample_rows=0, columns={}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--versions", type=int, default=200)
    ap.add_argument("--root")
    args = ap.parse_args()
    root = tempfile.mkdtemp(dir=args.root)
    try:
        store = open_artifact_store(root)
        catalog = DatasetCatalog(store, ledger=None)  # the listing cost alone, as before the ledger
        blob = os.urandom(args.mib * 2**20)
        print(f"{platform.machine()}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}")
        timings = {}
        for mode, version in (("copy and hash (before)", "c0" * 8), ("move with the tasks' digests", "d0" * 8)):
            staged, digests = {}, {}
            for i in range(args.files):
                key = f"staging/{version}/data/part-{i}.parquet"
                digests[key] = store.write_bytes(key, blob)
                staged[f"part-{i}.parquet"] = key
            t0 = time.perf_counter()
            catalog.commit(_manifest("bench", version), staged, {}, digests=digests if mode.startswith("move") else None)
            timings[mode] = time.perf_counter() - t0
            print(f"commit, {mode}: {args.files} files x {args.mib} MiB in {timings[mode]:.3f} s", flush=True)
        # Many versions, each with a few files, as a long-lived dataset has.
        for v in range(args.versions):
            version = f"{v:016x}"
            staged = {}
            for i in range(4):
                key = f"staging/{version}/part-{i}.parquet"
                store.write_bytes(key, b"x")
                staged[f"part-{i}.parquet"] = key
            catalog.commit(_manifest("many", version), staged, {})
        lookups = {}
        for mode in ("index", "full listing (before)"):
            if mode.startswith("full"):
                store.delete_dir(f"datasets/many/{INDEX}")  # as a dataset from before the index
            t0 = time.perf_counter()
            for _ in range(10):
                latest = catalog.get("many")
            lookups[mode] = (time.perf_counter() - t0) / 10
            assert latest.version == f"{args.versions - 1:016x}"
            print(f"get(latest) over {args.versions} versions, {mode}: {lookups[mode] * 1000:.1f} ms", flush=True)
        copy, move = timings["copy and hash (before)"], timings["move with the tasks' digests"]
        print(f"commit: {copy / move:.0f}x faster; lookup: {lookups['full listing (before)'] / lookups['index']:.0f}x faster")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
