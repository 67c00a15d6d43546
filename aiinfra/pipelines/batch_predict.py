"""``jobs/batch_predict.py``: score a dataset version with a registered model, write a new dataset version.

dataset version (Ray Data, read from the lake) -> map_batches on an autoscaling actor pool, each actor holding
the model once: the serving path's checks (column by column), transforms and model, then the ingestion gate's
per-batch step (hash, profile, write Parquet into staging) in the same actor -> the driver merges the batches'
statistics and commits the version ``<output>``, with lineage to the model version and the input version.

The predictions are written once, by the actor that made them: no Parquet between scoring and the gate to be
written and read back (that round trip was half of a small job's time; BENCHMARKS.md, "Batch inference").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from aiinfra.config import BatchSettings
from aiinfra.data.partitions import check_partition_columns
from aiinfra.errors import AiInfraError, InvalidInput
from aiinfra.inference.batch import BatchScorer
from aiinfra.pipelines.ingest import ingest_staged, process_batch, refused_batch
from aiinfra.pipelines.training_table import read_version

__all__ = ["batch_predict", "pool_strategy"]


class ScoreAndStage(BatchScorer):
    """A scoring actor that also stages what it scored: the gate's per-batch step on the predictions (no spec:
    the rows are the platform's own), returning the batch's statistics instead of its rows."""

    def __init__(self, storage_root: str, version: dict[str, Any], staging: str, what: str,
                 partition_by: Sequence[str] = ()) -> None:
        super().__init__(storage_root, version)
        self._storage_root, self._staging, self._what = storage_root, staging, what
        self._partition_by = list(partition_by)

    def __call__(self, batch: pa.Table) -> pa.Table:  # type: ignore[override]
        try:
            scored = super().__call__(batch)
        except AiInfraError as e:  # a bad row: the job stops with the row checks' message, typed
            return refused_batch(batch.num_rows, type(e)(f"{self._what}: {e}"))
        return process_batch(scored, storage_root=self._storage_root, staging=self._staging, spec=None,
                             partition_by=self._partition_by)


def _prediction_type(version: Any) -> str:
    """The ``prediction`` column's Arrow type name: the signature's first output (a label, or a regression's value)."""
    outputs = version.signature.outputs
    dtype = outputs[0].dtype if outputs else "float64"
    return {"float64": "double", "float32": "float"}.get(dtype, dtype)


def pool_strategy(data: Any, settings: BatchSettings, cluster_cpus: float, pool_size: int | None = None) -> Any:
    """The scoring actors' pool: ``pool_size`` actors when given, else autoscaling within ``settings``' bounds."""
    if pool_size is not None:
        if pool_size < 1:
            raise InvalidInput(f"pool size must be at least 1, got {pool_size}")
        return data.ActorPoolStrategy(size=pool_size)
    low, high = settings.pool_bounds(cluster_cpus)
    return data.ActorPoolStrategy(min_size=low, max_size=high)


def batch_predict(platform: Any, model_ref: str, dataset_ref: str, *, output: str | None = None,
                  pool_size: int | None = None, settings: BatchSettings | None = None,
                  who: str = "unknown", progress=None, partition_by: Sequence[str] = ()) -> dict[str, Any]:
    """Score ``dataset_ref`` with ``model_ref``; the predictions become the dataset version ``output``.

    ``pool_size``: a fixed number of scoring actors; by default the pool autoscales (``batch`` in the config).
    ``progress``: called with the merged statistics (``rows_in``: rows scored so far) as batches finish.
    ``partition_by``: write the predictions' files by the values of these columns (an input column, or
    ``prediction``), each actor its own, as ``col=value/part-....parquet`` (aiinfra/data/partitions.py).

    Raises:
        InvalidInput: the model has no signature, the dataset lacks a column the model needs, or a row does not
            fit the signature (named as the HTTP API names it, ``instances[i].field: why``, ``i`` counted within
            its batch). No version is created.
    """
    # Ray inside: `aiinfra predict` imports this module before connect() sets RAY_AUTH_MODE, which Ray
    # reads once, when it is imported.
    import ray
    import ray.data

    config = platform.config
    settings = settings or config.batch
    version = platform.registry.get(model_ref)
    if version.signature is None:
        raise InvalidInput(f"{version.ref} has no signature; batch inference needs one to check the rows")
    dataset = platform.datasets.get(dataset_ref)  # its manifest checked against the metadata DB
    missing = [f.name for f in version.signature.inputs
               if f.name not in {c["name"] for c in dataset.schema_} and not f.nullable]
    if missing:
        raise InvalidInput(f"{dataset.ref} lacks the input column(s) {', '.join(missing)} that {version.ref} needs")
    if partition_by:
        types = {c["name"]: c["type"] for c in dataset.schema_} | {"model": "string", "model_version": "int64"}
        types["prediction"] = _prediction_type(version)
        if any(o.name == "probability" for o in version.signature.outputs):
            types["probability"] = "double"
        check_partition_columns(list(partition_by), types)
    output = output or f"{dataset.name}_{version.name}_predictions"
    t0 = time.perf_counter()
    staging = f"staging/batch-{uuid.uuid4().hex}"
    compute = pool_strategy(ray.data, settings, ray.cluster_resources().get("CPU", 1.0), pool_size)

    def gated() -> Any:
        # Each file checked against the manifest's SHA-256 as it is read (one read task per file, of TASK_CPUS:
        # no listing task, which in Ray 2.60's default Parquet reader always asks for a whole CPU).
        return read_version(config.storage_root, dataset).map_batches(
            ScoreAndStage, fn_constructor_kwargs={
                "storage_root": config.storage_root, "version": version.model_dump(mode="json"), "staging": staging,
                "what": f"{dataset.ref} scored by {version.ref}", "partition_by": list(partition_by)},
            batch_format="pyarrow", batch_size=settings.batch_rows, compute=compute, num_cpus=settings.actor_cpus,
        )

    result = ingest_staged(config, output, gated, staging, source_uri=f"aiinfra://datasets/{dataset.ref}",
                           source_format="parquet", who=who, progress=progress, lineage={
                               "model": version.ref, "model_version": version.version, "input_dataset": dataset.ref,
                               "run_id": version.lineage.run_id,
                           }, partition_by=partition_by)
    out = result.version
    return {"model": version.ref, "input": dataset.ref, "output": out.ref, "rows": out.row_count,
            "created": result.created, "seconds": round(time.perf_counter() - t0, 2),
            "actors": {"min": compute.min_size, "max": compute.max_size}}
