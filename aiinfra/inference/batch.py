"""Batch inference: the serving path's transforms and model over a whole dataset version, on Ray Data.

Each actor of the pool loads the model version once from the artifact store (every file checked
against its SHA-256) and scores batches with the same ``Predictor`` the HTTP deployment uses, so
batch and online answers for the same rows are the same numbers. Rows that fail the signature's
checks are not dropped silently: the whole batch is refused with the reason, as online.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pandas as pd

from aiinfra.inference.predictor import Predictor, rows_from_frame
from aiinfra.registry.files import fetch_version_files
from aiinfra.registry.types import ModelVersion
from aiinfra.storage import open_artifact_store

__all__ = ["BatchScorer", "prediction_columns", "score_frame"]


def prediction_columns(task: str) -> list[str]:
    return ["prediction"] if task == "regression" else ["prediction", "probability"]


def score_frame(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus the predictions, the model name and version; the Predictor validates each row."""
    rows = rows_from_frame(frame, predictor.signature.inputs)
    answers = predictor.predict(rows)
    out = frame.copy()
    if predictor.spec.task == "regression":
        out["prediction"] = [a["value"] for a in answers]
    else:
        out["prediction"] = [a["label"] for a in answers]
        out["probability"] = [a["probability"] for a in answers]
    out["model"] = predictor.version.name
    out["model_version"] = predictor.version.version
    return out


class BatchScorer:
    """A Ray Data ``map_batches`` callable class: one model load per actor, then batches."""

    def __init__(self, storage_root: str, version: dict[str, Any]) -> None:
        mv = ModelVersion.model_validate(version)
        self._tmp = tempfile.TemporaryDirectory(prefix="aiinfra-batch-")
        local = fetch_version_files(open_artifact_store(storage_root), mv, self._tmp.name)
        self.predictor = Predictor(mv, local)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return score_frame(self.predictor, batch)
