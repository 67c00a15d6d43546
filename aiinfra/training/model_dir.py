"""The on-disk form of a trained model, as registered and as served.

    model.json        family, hyperparameters, dimensions, task, class labels
    preprocess.json   the fitted FeaturePipeline (or RawColumns: an imported graph with one input per column)
    weights.safetensors (torch families), model.ubj (xgboost: UBJSON), model.txt (lightgbm: its text model)
    or model.onnx (family "onnx": a graph imported, exported or quantized)

JSON, safetensors, ONNX and the tree libraries' own data formats only: nothing is ever unpickled from storage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import save_file

from aiinfra.data.transforms import FeaturePipeline, RawColumns, load_preprocess
from aiinfra.errors import InvalidInput
from aiinfra.training.runtimes import ONNX_FAMILY, WEIGHTS_FILE, TrainedModel, load_trained_model
from aiinfra.training.trees import is_tree_family

__all__ = ["ModelSpec", "load_model_dir", "save_model_dir"]

WEIGHTS = WEIGHTS_FILE["torch"]
SPEC = "model.json"
PREPROCESS = "preprocess.json"


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    params: dict[str, Any] = {}
    input_dim: int
    output_dim: int
    task: str = "binary"
    class_labels: list[Any] = [0, 1]
    # Regression targets are standardized for training; predictions are mapped back with these.
    target_mean: float = 0.0
    target_std: float = 1.0


def save_model_dir(path: str | Path, spec: ModelSpec, weights: dict[str, torch.Tensor] | bytes,
                   pre: FeaturePipeline | RawColumns) -> Path:
    """``weights``: a torch family's state dict, or a tree family's model as the library serialized it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if is_tree_family(spec.family) or spec.family == ONNX_FAMILY:
        if not isinstance(weights, bytes):
            raise TypeError(f"a {spec.family} model is saved from its serialized bytes")
        (path / WEIGHTS_FILE[spec.family]).write_bytes(weights)
    else:
        if isinstance(weights, bytes):
            raise TypeError(f"a {spec.family} model is saved from its state dict")
        # DDP wraps the module as "module.": store the plain module's names.
        clean = {k.removeprefix("module."): v.detach().cpu().contiguous() for k, v in weights.items()}
        save_file(clean, str(path / WEIGHTS))
    (path / SPEC).write_text(spec.model_dump_json(indent=2))
    (path / PREPROCESS).write_text(pre.to_json())
    return path


def load_model_dir(path: str | Path) -> tuple[ModelSpec, TrainedModel, FeaturePipeline | RawColumns]:
    path = Path(path)
    try:
        spec = ModelSpec.model_validate(json.loads((path / SPEC).read_text()))
        pre = load_preprocess((path / PREPROCESS).read_text())
        model = load_trained_model(path, spec)
    except FileNotFoundError as e:
        raise InvalidInput(f"{path} is not a model directory: {Path(e.filename).name} is missing") from None
    return spec, model, pre
