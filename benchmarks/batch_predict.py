"""Batch inference: `batch_predict` on Ray Data against a plain single-process loop over the same Parquet files.

The demo's churn MLP (fitted in this process, registered as `bench@1`) scores N rows of `make_customers` in
Parquet. Single-process loops read the files with pyarrow in 4,096-row batches and write the scored batches to
Parquet: the old row path (request-shaped dicts, the row checks), the column path (``score_table``: Arrow-typed
column checks, no dict per row), and the column path's floor (transforms and model only, no checks). The
baseline for the Ray runs is the fourth loop, which does a scoring actor's whole work in one process: the column
path, then the gate's per-batch step (hash, profile, write) on 65,536-row batches.
Then ``batch_predict`` on a local 2-CPU Ray runs end to end (read, score on the actor pool, the ingestion gate
over the predictions, commit as a dataset version) with a fixed pool of one actor and with the autoscaling
pool (1 to 4 actors of half a CPU).

    .venv/bin/python benchmarks/batch_predict.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import platform as host
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
BATCH = 4096


def _loop(files: list[Path], out: Path, score, batch_rows: int) -> float:
    """rows/s of ``score`` (a table -> a table) over ``files``, the results written as Parquet."""
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = 0, time.perf_counter()
    for i, f in enumerate(files):
        writer = None
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
            scored = score(pa.Table.from_batches([batch]))
            writer = writer or pq.ParquetWriter(out / f"part-{i}.parquet", scored.schema, compression="zstd")
            writer.write_table(scored)
            rows += batch.num_rows
        writer.close()
    return rows / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    from serving import fit_churn_mlp

    from aiinfra.config import load_config
    from aiinfra.data.synthetic import make_customers
    from aiinfra.inference.batch import score_table
    from aiinfra.inference.predictor import Predictor, rows_from_frame
    from aiinfra.pipelines.ingest import process_batch
    from aiinfra.platform import open_local
    from aiinfra.training.model_dir import save_model_dir
    from aiinfra.training.tabular import signature_for

    work = Path(tempfile.mkdtemp(prefix="aiinfra-bench-batch-"))
    config = load_config(environ={}, home=str(work / "home"))
    config = config.model_copy(update={"monitoring": config.monitoring.model_copy(update={"enabled": False})})
    print(f"generating {args.rows:,} rows and fitting the model ...", flush=True)
    src = work / "in"
    src.mkdir()
    per_file = 250_000
    for i, start in enumerate(range(0, args.rows, per_file)):
        make_customers(min(per_file, args.rows - start), seed=i).to_parquet(src / f"part-{i:03d}.parquet", index=False)
    files = sorted(src.iterdir())
    spec, model, pre, _ = fit_churn_mlp(make_customers(5_000, seed=7), [32, 16], epochs=30, batch=500, lr=0.01)
    model_dir = save_model_dir(work / "model", spec, model.state_dict(), pre)
    with open_local(config) as p:
        version = p.registry.register("bench", model_dir, signature=signature_for(pre))
    predictor = Predictor(version, model_dir)
    fields = predictor.signature.inputs

    def row_path(table: pa.Table) -> pa.Table:
        answers = predictor.predict(rows_from_frame(table.to_pandas(), fields))
        return table.append_column("prediction", pa.array([a["label"] for a in answers])).append_column(
            "probability", pa.array([a["probability"] for a in answers]))

    def floor(table: pa.Table) -> pa.Table:
        columns = {f.name: table.column(f.name).to_numpy() for f in fields}
        answers = predictor.answer(predictor.forward(predictor.transform_columns(columns, table.num_rows)))
        return table.append_column("probability", pa.array([a["probability"] for a in answers]))

    def gated(table: pa.Table) -> pa.Table:  # what each scoring actor does: score, then the gate's per-batch step
        scored = score_table(predictor, table)
        process_batch(scored, storage_root=str(work / "lake1"), staging="staging/x", spec=None)
        return scored

    results: dict[str, float] = {}
    for label, fn in [("row path, 1 process", row_path), ("column path (score_table), 1 process", lambda t: score_table(predictor, t)),
                      ("no checks (transforms + model only), 1 process", floor),
                      ("gated column path (score_table + process_batch), 1 process", gated)]:
        print(f"{label} ...", flush=True)
        results[label] = _loop(files, work / label.split()[0], fn, BATCH if fn is not gated else 65_536)
        print(f"  {results[label]:,.0f} rows/s", flush=True)
    by_rows = pq.read_table(work / "row").column("prediction").to_pylist()
    by_columns = pq.read_table(work / "column").column("prediction").to_pylist()
    assert by_rows == by_columns, "the row and column paths disagree"

    import ray

    from aiinfra.pipelines.batch_predict import batch_predict
    from aiinfra.pipelines.ingest import ingest
    from aiinfra.platform import connect

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=config.namespace)
    try:
        p = connect(config)
        dataset = ingest(config, "customers", str(src)).version
        for label, pool in [("batch_predict on Ray Data, 1 actor", 1), ("batch_predict on Ray Data, autoscaling 1-4 actors", None)]:
            print(f"{label} ...", flush=True)
            out = batch_predict(p, version.ref, dataset.ref, output=f"scored_{pool or 'auto'}", pool_size=pool)
            assert out["rows"] == args.rows
            results[label] = args.rows / out["seconds"]
            print(f"  {results[label]:,.0f} rows/s ({out['seconds']} s)", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base = results["gated column path (score_table + process_batch), 1 process"]
    print(f"\n{args.rows:,} rows, {host.machine()}, {os.cpu_count()} cores, Python {host.python_version()}, "
          f"Ray {ray.__version__}\n")
    print("| run | rows/s | / gated column path, 1 process |\n| --- | ---: | ---: |")
    for label, rate in results.items():
        print(f"| {label} | {rate:,.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
