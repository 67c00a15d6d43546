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
    scored = ray.data.read_parquet(paths, filesystem=store.fs).map_batches(
        BatchScorer, fn_constructor_kwargs={"storage_root": config.storage_root, "version": version.model_dump(mode="json")},
        batch_format="pandas", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool_size), num_cpus=0.5,
    )
    try:
        scored.write_parquet(store.path(staging), filesystem=store.fs)
        result = ingest(config, output, store.openable_uri_for(staging), who=who, lineage={
            "model": version.ref, "model_version": version.version, "input_dataset": dataset.ref,
            "run_id": version.lineage.run_id,
        })
    finally:
        store.delete_dir(staging)
    out = result.version
    return {"model": version.ref, "input": dataset.ref, "output": out.ref, "rows": out.row_count,
            "created": result.created, "seconds": round(time.perf_counter() - t0, 2)}
