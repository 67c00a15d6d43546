"""One model version, loaded and ready to answer: validate -> preprocess -> model -> postprocess.

A plain class: serving's router and model deployments wrap it, batch inference and the monitor's
reference reuse it, unit tests call it directly. Validation is against the version's registered signature and names every bad field.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aiinfra.errors import InvalidInput, ServiceUnavailable
from aiinfra.inference.columns import Columns, plain
from aiinfra.registry.types import FieldSpec, ModelVersion
from aiinfra.training.model_dir import load_model_dir
from aiinfra.training.tabular import postprocess

__all__ = ["Predictor", "rows_from_frame"]

MAX_INSTANCES = 10_000


def _check_value(field: FieldSpec, value: Any) -> str | None:
    """Why ``value`` does not fit ``field``, or None when it does."""
    if value is None:
        return None if field.nullable else "must not be null"
    if field.dtype in ("float32", "float64"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {type(value).__name__}"
        if isinstance(value, int) and abs(value) > sys.float_info.max:  # math.isfinite would raise OverflowError
            return "is out of range"
        if not math.isfinite(value):
            return "must be finite"
    elif field.dtype in ("int32", "int64"):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return f"must be an integer, got {value!r}"
        bits = 31 if field.dtype == "int32" else 63
        if not -(2**bits) <= value < 2**bits:
            return f"is out of range for {field.dtype}"
    elif field.dtype == "bool":
        if not isinstance(value, bool):
            return f"must be true or false, got {type(value).__name__}"
    elif field.dtype == "string" and not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    elif field.dtype == "timestamp":
        if not isinstance(value, str):
            return f"must be an ISO 8601 timestamp string, got {type(value).__name__}"
        try:
            pd.Timestamp(value)
        except (ValueError, TypeError):
            return f"must be an ISO 8601 timestamp, got {value!r}"
    return None


def _column_fits(field: FieldSpec, values: Sequence[Any]) -> bool:
    """A whole column passes ``_check_value`` (True), or may not (False: the row checks decide)."""
    if field.dtype in ("float32", "float64"):
        if not all(type(v) is float or type(v) is int for v in values):  # bool is not a number here
            return False
        try:
            return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())
        except OverflowError:  # an int beyond float range
            return False
    if field.dtype in ("int32", "int64"):
        if not all(type(v) is int for v in values):  # integral floats are fine too, but the row checks say so
            return False
        bits = 31 if field.dtype == "int32" else 63
        return all(-(2**bits) <= v < 2**bits for v in values)
    if field.dtype == "bool":
        return all(type(v) is bool for v in values)
    if field.dtype == "string":
        return all(type(v) is str for v in values)
    return False  # timestamps (and anything new): the row checks


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
        problems: list[str] = []
        for i, row in enumerate(instances):
            if not isinstance(row, dict):
                problems.append(f"instances[{i}]: must be an object, got {type(row).__name__}")
                continue
            for name in sorted(set(row) - set(self._fields)):
                problems.append(f"instances[{i}].{name}: unknown field")
            for name, field in self._fields.items():
                if name not in row:
                    if not field.nullable:
                        problems.append(f"instances[{i}].{name}: missing")
                    continue
                why = _check_value(field, row[name])
                if why:
                    problems.append(f"instances[{i}].{name}: {why}")
            if len(problems) >= 20:
                problems.append("(further problems not listed)")
                break
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
            if not _column_fits(field, values):
                return False
        return True

    # The three steps apart, so that a Serve deployment can batch the middle one across requests.
    def prepare(self, instances: object) -> np.ndarray:
        """Validated, transformed model inputs (one row per instance)."""
        valid = self.validate(instances)
        if isinstance(valid, Columns):  # no dict per row: the columns go to the transforms as they are
            return self.preprocessor.transform_columns(valid.columns, len(valid))
        return self.preprocessor.transform_rows(valid)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's raw scores, one entry (or row) per input row."""
        return np.atleast_1d(self.model.scores(x))

    def answer(self, scores: np.ndarray) -> list[dict[str, Any]]:
        return postprocess(self.spec, scores)

    def predict(self, instances: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self.answer(self.forward(self.prepare(instances)))
