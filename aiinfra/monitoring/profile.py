"""The reference profile: what a version's monitor compares traffic with, built once when it is registered.

The training pipeline writes it into the model directory (``reference_profile.parquet`` and
``reference_profile.json``) right after the holdout evaluation, so it is registered, hashed and
verified like every other file of the version; a monitor (re)start reads it back instead of
re-reading the dataset and re-scoring it. It holds up to ``MAX_PROFILE_ROWS`` holdout rows: the
model's inputs, the true label and the model's outputs on them (the probability of the positive
class, each class's probability, or the predicted value). Holdout rows, not training rows: the
model never saw them, so its scores there are what production scores look like, and the labels are
what confidence-based performance estimation is calibrated on.

Versions registered before profiles existed (or from a model directory built elsewhere) have none;
``aiinfra.monitoring.reference`` then builds the drift part from the dataset sample as before.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aiinfra.errors import InvalidInput
from aiinfra.registry.types import FieldSpec

__all__ = ["MAX_PROFILE_ROWS", "PROFILE", "PROFILE_META", "ReferenceProfile", "build_profile", "load_profile",
           "write_profile"]

PROFILE = "reference_profile.parquet"
PROFILE_META = "reference_profile.json"
MAX_PROFILE_ROWS = 5_000
LABEL_COLUMN = "__label__"  # the true label's class index (classification) or value (regression)
SCORE_COLUMN = "__score__"  # the number prediction drift tracks (aiinfra.inference.scores.score_of)
PROBABILITY_PREFIX = "__p"  # __p0, __p1, ...: each class's probability (multiclass)


@dataclass
class ReferenceProfile:
    frame: pd.DataFrame  # the model's tested inputs
    numeric: list[str]
    categorical: list[str]
    scores: np.ndarray  # one number per row (score_of)
    task: str
    class_labels: list[Any]
    source: str  # where the rows came from ("holdout of customers@3")
    labels: np.ndarray | None = None  # class index or value per row, when known
    probabilities: np.ndarray | None = None  # (rows, classes), multiclass
    meta: dict[str, Any] = field(default_factory=dict)


def tested_inputs(inputs: list[FieldSpec], columns: Any) -> tuple[list[str], list[str]]:
    """(numeric, categorical) inputs present in ``columns``: strings and booleans are categorical, timestamps untested."""
    numeric, categorical = [], []
    for f in inputs:
        if f.name not in columns:
            continue
        if f.dtype in ("string", "bool"):
            categorical.append(f.name)
        elif f.dtype != "timestamp":
            numeric.append(f.name)
    return numeric, categorical


def build_profile(frame: pd.DataFrame, inputs: list[FieldSpec], *, task: str, class_labels: list[Any],
                  outputs: np.ndarray, labels: np.ndarray | None, source: str, seed: int = 0) -> ReferenceProfile:
    """A profile from rows the model was scored on.

    ``outputs``: the model's raw outputs on ``frame``, row for row (positive-class probability, class
    probabilities (rows, classes), or values); ``labels``: class indices or values, or None.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if len(outputs) != len(frame) or (labels is not None and len(labels) != len(frame)):
        raise InvalidInput(f"the profile got {len(frame)} rows, {len(outputs)} outputs and "
                           f"{'no' if labels is None else len(labels)} labels")
    numeric, categorical = tested_inputs(inputs, frame.columns)
    if not numeric and not categorical:
        raise InvalidInput(f"the rows from {source} hold none of the model's inputs")
    keep = np.arange(len(frame))
    if len(keep) > MAX_PROFILE_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), MAX_PROFILE_ROWS, replace=False))
    probabilities = outputs[keep] if outputs.ndim == 2 else None
    if probabilities is not None:
        scores = probabilities.max(axis=1)  # score_of a multiclass answer: its top class's probability
    else:
        scores = outputs[keep]
    return ReferenceProfile(
        frame=frame.iloc[keep][numeric + categorical].reset_index(drop=True), numeric=numeric,
        categorical=categorical, scores=scores, task=task, class_labels=list(class_labels), source=source,
        labels=None if labels is None else np.asarray(labels, dtype=np.float64)[keep], probabilities=probabilities)


def write_profile(profile: ReferenceProfile, model_dir: str | Path) -> None:
    """Into the model directory, before it is registered."""
    table = profile.frame.copy()
    table[SCORE_COLUMN] = profile.scores
    if profile.labels is not None:
        table[LABEL_COLUMN] = profile.labels
    if profile.probabilities is not None:
        for k in range(profile.probabilities.shape[1]):
            table[f"{PROBABILITY_PREFIX}{k}"] = profile.probabilities[:, k]
    path = Path(model_dir)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path / PROFILE)
    meta = {"numeric": profile.numeric, "categorical": profile.categorical, "task": profile.task,
            "class_labels": profile.class_labels, "source": profile.source, "rows": len(table),
            "labelled": profile.labels is not None, **profile.meta}
    (path / PROFILE_META).write_text(json.dumps(meta, indent=2, default=str))


def load_profile(parquet: bytes, meta_json: bytes) -> ReferenceProfile:
    table = pq.read_table(io.BytesIO(parquet)).to_pandas()
    meta = json.loads(meta_json)
    n_classes = sum(c.startswith(PROBABILITY_PREFIX) for c in table.columns)
    probabilities = (table[[f"{PROBABILITY_PREFIX}{k}" for k in range(n_classes)]].to_numpy(dtype=np.float64)
                     if n_classes else None)
    known = {"numeric", "categorical", "task", "class_labels", "source", "rows", "labelled"}
    return ReferenceProfile(
        frame=table[meta["numeric"] + meta["categorical"]], numeric=list(meta["numeric"]),
        categorical=list(meta["categorical"]), scores=table[SCORE_COLUMN].to_numpy(dtype=np.float64),
        task=meta["task"], class_labels=list(meta["class_labels"]), source=meta["source"],
        labels=table[LABEL_COLUMN].to_numpy(dtype=np.float64) if LABEL_COLUMN in table.columns else None,
        probabilities=probabilities, meta={k: v for k, v in meta.items() if k not in known})
