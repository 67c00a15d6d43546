"""One model version, loaded and ready to answer: validate -> preprocess -> model -> postprocess.

A plain class: serving's router and model deployments wrap it, batch inference and the monitor's
reference reuse it, unit tests call it directly. Validation is against the version's registered signature and names every bad field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aiinfra.errors import InvalidInput, ServiceUnavailable
from aiinfra.inference.checks import column_fits, row_problems
from aiinfra.inference.columns import Columns, plain
from aiinfra.registry.types import FieldSpec, ModelVersion
from aiinfra.training.model_dir import load_model_dir
from aiinfra.training.tabular import postprocess

__all__ = ["MAX_INSTANCES", "Predictor", "rows_from_frame"]

MAX_INSTANCES = 10_000


def rows_from_frame(frame: pd.DataFrame, fields: Sequence[FieldSpec]) -> list[dict[str, Any]]:
    """Request-shaped rows from a table, for the fields it has: missing values as null, numpy scalars
    as Python values, timestamps as ISO 8601 strings (what an HTTP client would send)."""
    present = [f for f in fields if f.name in frame.columns]
    rows = [{k: (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)) for k, v in r.items()}
            for r in frame[[f.name for f in present]].to_dict("records")]
    for f in present:
        if f.dtype == "timestamp":
            for r in rows:
                if r[f.name] is not None:
                    r[f.name] = pd.Timestamp(r[f.name]).isoformat()
    return rows


class Predictor:
    """``device``: "cpu", or "cuda" (a model deployment given GPUs; refused where CUDA is not available)."""

    def __init__(self, version: ModelVersion, model_dir: str | Path, device: str = "cpu") -> None:
        if version.signature is None:
            raise InvalidInput(f"{version.ref} has no signature; register it with one to serve it")
        self.version = version
        self.signature = version.signature
        self.spec, self.model, self.preprocessor = load_model_dir(model_dir)
        if device != "cpu":
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ServiceUnavailable(f"{version.ref} is to be served on {device}, but this process sees no "
                                         "CUDA device; give the model deployments GPUs or set serve.model_gpus: 0")
            self.model.to(device)
        self._fields = {f.name: f for f in self.signature.inputs}

    def validate(self, instances: object) -> list[Mapping[str, Any]]:
        """Check request rows against the signature; one InvalidInput lists every problem."""
        if isinstance(instances, Columns):
            if self._columns_fit(instances):
                return instances  # type: ignore[return-value]
            instances = [plain(r) for r in instances]  # the row checks name each problem, as for any request
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("instances must be a non-empty list of objects")
        if len(instances) > MAX_INSTANCES:
            raise InvalidInput(f"at most {MAX_INSTANCES} instances per request, got {len(instances)}")
        problems = row_problems(self._fields, instances)
        if problems:
            raise InvalidInput("invalid input: " + "; ".join(problems))
        return instances  # type: ignore[return-value]

    def _columns_fit(self, columns: Columns) -> bool:
        """Whether rows given column by column (an OIP request's tensors) all fit the signature, checked a column
        at a time: the cheap test for the usual, valid request; any doubt goes to the row checks, which say why."""
        n = len(columns)
        if not 0 < n <= MAX_INSTANCES or set(columns.columns) - set(self._fields):
            return False
        for name, field in self._fields.items():
            values = columns.columns.get(name)
            if values is None:
                if not field.nullable:
                    return False
                continue
            if not column_fits(field, values):
                return False
        return True

    # The three steps apart, so that a Serve deployment can batch the middle one across requests.
    def prepare(self, instances: object) -> np.ndarray:
        """Validated, transformed model inputs (one row per instance)."""
        valid = self.validate(instances)
        if isinstance(valid, Columns):  # no dict per row: the columns go to the transforms as they are
            return self.preprocessor.transform_columns(valid.columns, len(valid))
        return self.preprocessor.transform_rows(valid)

    def transform_columns(self, columns: Mapping[str, Any], n: int) -> np.ndarray:
        """Model inputs for ``n`` rows given column by column that are already checked (``tables.table_columns``)."""
        return self.preprocessor.transform_columns(columns, n)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's raw scores, one entry (or row) per input row."""
        return np.atleast_1d(self.model.scores(x))

    def answer(self, scores: np.ndarray) -> list[dict[str, Any]]:
        return postprocess(self.spec, scores)

    def predict(self, instances: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self.answer(self.forward(self.prepare(instances)))
