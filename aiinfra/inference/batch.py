"""Batch inference: the serving path's checks, transforms and model over a whole dataset version, on Ray Data.

Each actor of the pool loads the model version once from the artifact store (every file checked
against its SHA-256) and scores Arrow batches with the same ``Predictor`` the HTTP deployment uses, so
batch and online answers for the same rows are the same numbers. A batch is checked a column at a time
(``tables.table_columns``: the row checks' verdicts and messages, without a dict per row). Rows that fail
the signature's checks are not dropped silently: the whole batch is refused with the reason, as online.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pyarrow as pa

from aiinfra.inference.predictor import Predictor
from aiinfra.inference.tables import table_columns
from aiinfra.registry.files import fetch_version_files
from aiinfra.registry.types import ModelVersion
from aiinfra.storage import open_artifact_store

__all__ = ["BatchScorer", "score_table"]


def score_table(predictor: Predictor, table: pa.Table) -> pa.Table:
    """``table`` plus the predictions (``prediction``, and ``probability`` for classifiers), the model's name and
    version. Columns of those names already in ``table`` (scoring a scored version again) are replaced."""
    n = table.num_rows
    x = predictor.transform_columns(table_columns(table, predictor.signature.inputs), n)
    answers = predictor.answer(predictor.forward(x)) if n else []
    if predictor.spec.task == "regression":
        added: dict[str, pa.Array] = {"prediction": pa.array([a["value"] for a in answers], pa.float64())}
    else:
        labels = [a["label"] for a in answers]
        label_type = pa.array(list(predictor.spec.class_labels)).type  # one type for every batch's file
        added = {"prediction": pa.array(labels, label_type),
                 "probability": pa.array([a["probability"] for a in answers], pa.float64())}
    added["model"] = pa.array([predictor.version.name] * n, pa.string())
    added["model_version"] = pa.array([predictor.version.version] * n, pa.int64())
    out = table.drop_columns([c for c in added if c in table.column_names])
    for name, values in added.items():
        out = out.append_column(name, values)
    return out


class BatchScorer:
    """A Ray Data ``map_batches`` callable class (``batch_format="pyarrow"``): one model load per actor, then batches."""

    def __init__(self, storage_root: str, version: dict[str, Any]) -> None:
        mv = ModelVersion.model_validate(version)
        self._tmp = tempfile.TemporaryDirectory(prefix="aiinfra-batch-")
        local = fetch_version_files(open_artifact_store(storage_root), mv, self._tmp.name)
        self.predictor = Predictor(mv, local)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_table(self.predictor, batch)
