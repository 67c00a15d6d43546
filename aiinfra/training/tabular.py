"""Tables to tensors and back, for training, evaluation, batch inference and serving alike.

Plain functions (no Ray): the one place that turns a DataFrame into the model's ``x`` and ``y``
and the model's outputs into scores, so that every path that runs a model gives the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from aiinfra.data.transforms import FeaturePipeline, Impute
from aiinfra.errors import InvalidInput
from aiinfra.registry.types import FieldSpec, Signature
from aiinfra.training.model_dir import ModelSpec

__all__ = [
    "class_labels_for",
    "encode_labels",
    "postprocess",
    "predict_scores",
    "signature_for",
    "to_training_batch",
]


def _python_scalar(value: Any) -> Any:
    """numpy's 1 and Python's 1 as one label: numpy scalars become the Python value, others pass unchanged."""
    return value.item() if hasattr(value, "item") else value


def class_labels_for(task: str, y: pd.Series) -> list[Any]:
    """The sorted distinct labels of a classification target (index i is class i)."""
    if task == "regression":
        return []
    values = sorted({_python_scalar(v) for v in y.dropna().unique()}, key=lambda v: (str(type(v)), v))
    if task == "binary" and len(values) != 2:
        raise InvalidInput(f"a binary task needs exactly 2 label values, the training rows have {len(values)}: {values[:10]}")
    if task == "multiclass" and len(values) < 2:
        raise InvalidInput(f"a multiclass task needs at least 2 label values, the training rows have {values}")
    return values


def encode_labels(task: str, y: pd.Series, class_labels: Sequence[Any], target_mean: float = 0.0,
                  target_std: float = 1.0) -> np.ndarray:
    """Class indexes (classification) or the standardized target (regression)."""
    if y.isna().any():
        raise InvalidInput(f"the label column has {int(y.isna().sum())} missing value(s)")
    if task == "regression":
        return ((y.to_numpy(dtype=np.float64) - target_mean) / target_std).astype(np.float32)
    index = {v: i for i, v in enumerate(class_labels)}
    try:
        codes = np.fromiter((index[_python_scalar(v)] for v in y), dtype=np.int64, count=len(y))
    except KeyError as e:
        raise InvalidInput(f"label value {e.args[0]!r} was not seen in training (classes: {list(class_labels)})") from None
    return codes if task == "multiclass" else codes.astype(np.float32)


def to_training_batch(batch: pd.DataFrame, pre: FeaturePipeline, label: str, task: str, class_labels: list[Any],
                      target_mean: float = 0.0, target_std: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": pre.transform(batch), "y": encode_labels(task, batch[label], class_labels, target_mean, target_std)}


def predict_scores(module: nn.Module, spec: ModelSpec, x: np.ndarray, *, batch_size: int = 65_536) -> np.ndarray:
    """P(class 1) for binary, class probabilities (n, k) for multiclass, predictions for regression.

    Runs on the module's device (a GPU model deployment moves it there); answers come back as numpy.
    """
    outs = []
    module.eval()
    device = next(module.parameters(), torch.empty(0)).device
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)).to(device)
            out = module(batch)
            if spec.task == "binary":
                outs.append(torch.sigmoid(out.squeeze(-1)).double().cpu().numpy())
            elif spec.task == "multiclass":
                outs.append(torch.softmax(out.double(), dim=-1).cpu().numpy())
            else:
                outs.append(out.squeeze(-1).double().cpu().numpy() * spec.target_std + spec.target_mean)
    if not outs:
        return np.zeros((0, spec.output_dim) if spec.task == "multiclass" else (0,))
    return np.concatenate(outs)


def postprocess(spec: ModelSpec, scores: np.ndarray) -> list[dict[str, Any]]:
    """Scores to the response's rows: label and probability, or the predicted value."""
    if spec.task == "binary":
        return [{"label": spec.class_labels[int(p >= 0.5)], "probability": round(float(p), 6)} for p in scores]
    if spec.task == "multiclass":
        top = scores.argmax(axis=1)
        return [
            {"label": spec.class_labels[int(i)], "probability": round(float(row[i]), 6),
             "probabilities": [round(float(p), 6) for p in row]}
            for i, row in zip(top, scores)
        ]
    return [{"value": float(v)} for v in scores]


def signature_for(pre: FeaturePipeline, task: str = "binary", class_labels: Sequence[Any] = (0, 1)) -> Signature:
    """Inputs as the fitted features expect them; outputs by task.

    A feature with an ``impute`` step takes a missing value (null, or NaN in a table): the step fills it, so the
    signature lets it through (the data the model was made for has gaps there). Without one, a null is refused.
    """
    inputs = []
    for f in pre.spec.features:
        last = f.steps[-1]
        categories = getattr(last, "categories", None) if f.kind == "categorical" else None
        imputed = any(isinstance(step, Impute) for step in f.steps)
        inputs.append(FieldSpec(name=f.column, dtype=pre.input_dtypes.get(f.column, "float64"),  # type: ignore[arg-type]
                                categories=categories, nullable=imputed))
    if task == "regression":
        outputs = [FieldSpec(name="value", dtype="float64")]
    else:
        label_dtype = "string" if any(isinstance(c, str) for c in class_labels) else "int64"
        outputs = [FieldSpec(name="label", dtype=label_dtype), FieldSpec(name="probability", dtype="float64")]  # type: ignore[arg-type]
    return Signature(inputs=inputs, outputs=outputs)
