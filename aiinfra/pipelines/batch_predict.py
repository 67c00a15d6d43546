"""``jobs/batch_predict.py``: score a dataset version with a registered model, write a new dataset version.

dataset version (Ray Data, read from the lake) -> map_batches on an actor pool of ``BatchScorer``
(the serving path's validation, transforms and model) -> Parquet in a staging area -> the ingestion
gate, which versions it as ``<output>`` with lineage to the model version and the input version.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiinfra.data.catalog import DatasetCatalog
from aiinfra.errors import InvalidInput
from aiinfra.inference.batch import BatchScorer
from aiinfra.pipelines.ingest import ingest

__all__ = ["batch_predict"]


# What the read and write tasks reserve: a share, so that they fit beside the scoring actors and Serve's
# replicas on a small cluster (a default task asks for a whole CPU).
READ_CPUS = 0.25


def _read(data: Any, paths: list[str], filesystem: Any) -> Any:
    """The version's files as a Dataset, read by tasks of ``READ_CPUS``.

    Ray 2.60's default Parquet reader (datasource V2) first lists the files in a task that always asks for a whole
    CPU, whatever the read is given; on a 2-CPU cluster running Serve (0.7 CPU) and a scoring actor (0.5) that
    task never starts and the job waits forever. The V1 reader takes ``num_cpus`` for all of its tasks.
    """
    ctx = data.DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False  # read_parquet copies the context when it is called: only this read is affected
    try:
        return data.read_parquet(paths, filesystem=filesystem, num_cpus=READ_CPUS)
    finally:
        ctx.use_datasource_v2 = previous


def batch_predict(platform: Any, model_ref: str, dataset_ref: str, *, output: str | None = None,
                  pool_size: int = 1, batch_size: int = 4096, who: str = "unknown") -> dict[str, Any]:
    # Ray inside: `aiinfra predict` imports this module before connect() sets RAY_AUTH_MODE, which Ray
    # reads once, when it is imported.
    import ray.data

    config, store = platform.config, platform.store
    version = platform.registry.get(model_ref)
    if version.signature is None:
        raise InvalidInput(f"{version.ref} has no signature; batch inference needs one to check the rows")
    dataset = DatasetCatalog(store).get(dataset_ref)
    missing = [f.name for f in version.signature.inputs
               if f.name not in {c["name"] for c in dataset.schema_} and not f.nullable]
    if missing:
        raise InvalidInput(f"{dataset.ref} lacks the input column(s) {', '.join(missing)} that {version.ref} needs")
    output = output or f"{dataset.name}_{version.name}_predictions"
    t0 = time.perf_counter()
    paths = [store.path(f"{dataset.key}/{rel}") for rel in sorted(dataset.files) if not rel.startswith("_")]
    staging = f"staging/batch-{uuid.uuid4().hex}"
    scored = _read(ray.data, paths, store.fs).map_batches(
        BatchScorer, fn_constructor_kwargs={"storage_root": config.storage_root, "version": version.model_dump(mode="json")},
        batch_format="pandas", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool_size), num_cpus=0.5,
    )
    try:
        scored.write_parquet(store.path(staging), filesystem=store.fs, ray_remote_args={"num_cpus": READ_CPUS})
        result = ingest(config, output, store.openable_uri_for(staging), who=who, lineage={
            "model": version.ref, "model_version": version.version, "input_dataset": dataset.ref,
            "run_id": version.lineage.run_id,
        })
    finally:
        store.delete_dir(staging)
    out = result.version
    return {"model": version.ref, "input": dataset.ref, "output": out.ref, "rows": out.row_count,
            "created": result.created, "seconds": round(time.perf_counter() - t0, 2)}
