"""The training table at scale: point-in-time join, split and fitted transforms on Ray Data, then one epoch on a
2-worker trainer, against DuckDB doing the same join and statistics in one process.

N label rows (the demo's customers) get their features point-in-time from a source of N profile rows (the same
customers a day earlier, other charges). The Ray side is ``prepare_on_ray`` (data.engine: ray) and one
epoch of ``fit`` on 2 workers; the holdout stays a Dataset (evaluation is not part of this benchmark). A
sampler thread records the peak resident memory of this process (the job's driver) and of every Ray worker
process. DuckDB's side: ``ASOF LEFT JOIN``, the time threshold, and the same statistics (mean, population
standard deviation, median, per-category counts) over the training rows.

Target (issue 15): driver peak under 1.5 GiB whatever N; wall time within 2x of DuckDB.

    .venv/bin/python benchmarks/training_table.py [--rows 2000000] [--skip-duckdb]
"""

from __future__ import annotations

import argparse
import os
import platform as host
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq

PER_FILE = 1_000_000
GIB = 2**30


class PeakMemory:
    """Peak RSS of this process and of each Ray worker process (``ray::`` in its name), sampled every 0.2 s."""

    def __init__(self) -> None:
        self.driver = 0
        self.workers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            for p in psutil.process_iter(["pid", "name", "cmdline"]):
                try:
                    if (p.info["name"] or "").startswith("ray::") or any("default_worker.py" in c for c in p.info["cmdline"] or []):
                        self.workers[p.pid] = max(self.workers.get(p.pid, 0), p.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _generate(work: Path, rows: int) -> tuple[Path, Path]:
    from aiinfra.data.synthetic import make_customers

    labels, source = work / "labels", work / "source"
    labels.mkdir()
    source.mkdir()
    for i, start in enumerate(range(0, rows, PER_FILE)):
        n = min(PER_FILE, rows - start)
        frame = make_customers(n, seed=i, first_id=100_000 + start)
        frame.to_parquet(labels / f"part-{i:03d}.parquet", index=False)
        earlier = frame.drop(columns=["churned"]).assign(
            event_ts=frame["event_ts"] - pd.Timedelta(days=1), monthly_charges=frame["monthly_charges"] * 0.9)
        earlier.to_parquet(source / f"part-{i:03d}.parquet", index=False)
    return labels, source


def _commit(catalog, name: str, folder: Path) -> str:
    """A dataset version of ``folder``'s files, without the ingestion gate (benchmarked in data.py)."""
    from aiinfra.data.catalog import DatasetVersion
    from aiinfra.data.profile import DatasetProfile

    staged, rows = {}, 0
    for f in sorted(folder.iterdir()):
        catalog.store.write_bytes(f"staging/{name}/{f.name}", f.read_bytes())
        staged[f.name] = f"staging/{name}/{f.name}"
        rows += pq.ParquetFile(f).metadata.num_rows
    schema = [{"name": fld.name, "type": str(fld.type)} for fld in pq.read_schema(next(folder.iterdir()))]
    manifest = DatasetVersion(name=name, version=f"{rows:x}"[-16:].rjust(4, "0"), created_at=0.0, source_uri=str(folder), source_format="parquet",
                              schema=schema, row_count=rows, rows_in=rows, quarantined_count=0, files={},
                              profile=DatasetProfile(row_count=rows, sample_rows=0, columns={}))
    return catalog.commit(manifest, staged, {}).ref


def _duckdb(labels: Path, source: Path, delay_s: int) -> tuple[float, int]:
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute(f"""
        CREATE TABLE joined AS
        SELECT l.customer_id, l.event_ts + INTERVAL {delay_s} SECOND AS label_ts, l.churned,
               s.tenure_months, s.monthly_charges, s.support_calls, s.plan, s.region
        FROM read_parquet('{labels}/*.parquet') l
        ASOF LEFT JOIN read_parquet('{source}/*.parquet') s
          ON l.customer_id = s.customer_id AND s.event_ts <= l.event_ts + INTERVAL {delay_s} SECOND""")
    (threshold,) = con.execute("SELECT quantile_disc(label_ts, 0.8) FROM joined").fetchone()
    con.execute("CREATE TABLE train AS SELECT * FROM joined WHERE label_ts < ?", [threshold])
    con.execute("""SELECT avg(tenure_months), stddev_pop(tenure_months), median(monthly_charges),
                          avg(monthly_charges), stddev_pop(monthly_charges), avg(support_calls), stddev_pop(support_calls)
                   FROM train""").fetchall()
    con.execute("SELECT plan, count(*) FROM train GROUP BY plan").fetchall()
    con.execute("SELECT region, count(*) FROM train GROUP BY region").fetchall()
    (n,) = con.execute("SELECT count(*) FROM train").fetchone()
    con.close()
    return time.perf_counter() - t0, int(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--object-store-gib", type=float, default=6.0)
    args = parser.parse_args()

    import ray

    from aiinfra.config import load_config
    from aiinfra.data.synthetic import LABEL
    from aiinfra.data.transforms import load_feature_spec
    from aiinfra.demo.configs import example_config
    from aiinfra.pipelines.training_table import prepare_on_ray
    from aiinfra.platform import connect
    from aiinfra.training.config import TrainConfig
    from aiinfra.training.ray_train import fit

    work = Path(tempfile.mkdtemp(prefix="aiinfra-bench-table-"))
    print(f"generating {args.rows:,} label rows and {args.rows:,} source rows ...", flush=True)
    labels_dir, source_dir = _generate(work, args.rows)
    results: dict[str, object] = {}
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False,
             object_store_memory=int(args.object_store_gib * GIB))
    try:
        config = load_config(environ={}, home=str(work / "home"))
        platform = connect(config)
        labels = _commit(platform.datasets, "bench_labels", labels_dir)
        _commit(platform.datasets, "bench_profiles", source_dir)
        cfg = TrainConfig.model_validate({
            "name": "bench-table", "task": "binary",
            "data": {"dataset": labels, "label": LABEL, "engine": "ray", "features": load_feature_spec(example_config("customers_features.yaml")),
                     "feature_view": {"name": "bench_profile", "entity": "customer_id", "timestamp": "event_ts",
                                      "source": "bench_profiles",
                                      "features": ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]},
                     "label_delay_s": 3600, "split": {"holdout_fraction": 0.2, "validation_fraction": 0.1}},
            "model": {"family": "tabular_mlp", "params": {"hidden": [32, 16]}},
            "trainer": {"num_workers": 2, "cpus_per_worker": 0.5, "epochs": 1, "batch_size": 4096, "patience": None,
                        "cache_shards": False},
        })
        version = platform.datasets.get(labels)
        print("building the training table on Ray Data ...", flush=True)
        with PeakMemory() as peak:
            t0 = time.perf_counter()
            data, holdout, resolved, _ = prepare_on_ray(platform, cfg, version, holdout_as_dataset=True)
            t_table = time.perf_counter() - t0
            print(f"  table and fit: {t_table:.1f} s; train {data.n_train:,}, validation {data.n_val:,}", flush=True)
            t1 = time.perf_counter()
            fit(resolved, data, storage_root=config.storage_root, run_name=f"bench-table-{os.getpid()}-{int(t0)}")
            t_epoch = time.perf_counter() - t1
        results.update({"table_s": t_table, "epoch_s": t_epoch, "driver_peak": peak.driver,
                        "worker_peak": max(peak.workers.values(), default=0), "train_rows": data.n_train})
        print(f"  one epoch on 2 workers: {t_epoch:.1f} s", flush=True)
        platform.close()
    finally:
        ray.shutdown()
    if not args.skip_duckdb:
        print("DuckDB: the same as-of join and statistics in one process ...", flush=True)
        with PeakMemory() as peak:
            t_duck, n = _duckdb(labels_dir, source_dir, 3600)
        results.update({"duckdb_s": t_duck, "duckdb_peak": peak.driver, "duckdb_train_rows": n})
    shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {host.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB, "
          f"Python {host.python_version()}, Ray {ray.__version__}; date: {time.strftime('%Y-%m-%d')}; "
          f"{args.rows:,} label rows, {args.rows:,} source rows\n")
    print("| run | wall s | peak RSS |")
    print("| --- | ---: | ---: |")
    print(f"| Ray Data: join, split, fit (driver) | {results['table_s']:.1f} | {results['driver_peak'] / GIB:.2f} GiB |")
    print(f"| Ray Train: one epoch, 2 workers (largest worker process over the run) | {results['epoch_s']:.1f} | "
          f"{results['worker_peak'] / GIB:.2f} GiB |")
    if "duckdb_s" in results:
        print(f"| DuckDB, one process: as-of join, threshold, statistics | {results['duckdb_s']:.1f} | "
              f"{results['duckdb_peak'] / GIB:.2f} GiB |")
        print(f"\ntable on Ray Data / DuckDB: {results['table_s'] / results['duckdb_s']:.2f}x (target <= 2x); "
              f"training rows {results['train_rows']:,} vs DuckDB {results['duckdb_train_rows']:,}")
    print(f"driver peak {results['driver_peak'] / GIB:.2f} GiB (target < 1.5 GiB)")


if __name__ == "__main__":
    main()
