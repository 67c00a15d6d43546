"""What a served model's traffic is compared with: rows like those it was trained on, and its scores on them.

The reference is the stored sample of the model's training dataset version (kept with every
version by the ingestion gate), restricted to the model's inputs; the model's own scores on those
rows make the prediction-drift baseline. Numeric inputs get the KS test, categorical (string or
bool) inputs the chi-squared test; timestamps are not tested.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from aiinfra.data.catalog import SAMPLE, DatasetCatalog
from aiinfra.errors import InvalidInput
from aiinfra.inference.scores import score_of
from aiinfra.registry.files import fetch_version_files
from aiinfra.registry.types import ModelVersion

__all__ = ["Reference", "build_reference"]

MAX_REFERENCE_ROWS = 5_000


@dataclass
class Reference:
    frame: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    scores: np.ndarray
    dataset_version: str
    task: str = "binary"
    class_labels: list[Any] | None = None


def build_reference(store: Any, version: ModelVersion, *, seed: int = 0) -> Reference:
    # Here, not at the top: the predictor loads torch, and the monitor's clients (serving, the autopilot,
    # `aiinfra monitor`) import this module through monitoring.actor without needing it.
    from aiinfra.inference.predictor import Predictor, rows_from_frame

    if version.signature is None:
        raise InvalidInput(f"{version.ref} has no signature: there is nothing to monitor its inputs against")
    ref = version.lineage.dataset_version
    if not ref:
        raise InvalidInput(f"{version.ref} records no training dataset version in its lineage; it cannot be monitored")
    dataset = DatasetCatalog(store).get(ref)
    key = f"{dataset.key}/{SAMPLE}"
    if store.exists(key):
        frame = pq.read_table(io.BytesIO(store.read_bytes(key))).to_pandas()
    else:
        frame = DatasetCatalog(store).load(dataset).to_pandas()
    if len(frame) > MAX_REFERENCE_ROWS:
        frame = frame.sample(MAX_REFERENCE_ROWS, random_state=seed)
    numeric, categorical = [], []
    for field in version.signature.inputs:
        if field.name not in frame.columns:
            continue
        if field.dtype in ("string", "bool"):
            categorical.append(field.name)
        elif field.dtype != "timestamp":
            numeric.append(field.name)
    if not numeric and not categorical:
        raise InvalidInput(f"{dataset.ref} holds none of {version.ref}'s inputs")
    frame = frame.reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor(version, fetch_version_files(store, version, tmp))
        rows = rows_from_frame(frame, version.signature.inputs)
        scores = np.array([score_of(p) for p in predictor.predict(rows)], dtype=np.float64)
    return Reference(frame[numeric + categorical], numeric, categorical, scores, dataset.ref,
                     task=predictor.spec.task, class_labels=list(predictor.spec.class_labels))
