"""The on-disk form of a trained model, as registered and as served.

    model.json        family, hyperparameters, dimensions, task, class labels
    preprocess.json   the fitted FeaturePipeline
    weights.safetensors

JSON and safetensors only: nothing is ever unpickled from storage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file
from torch import nn

from aiinfra.data.transforms import FeaturePipeline
from aiinfra.errors import InvalidInput
from aiinfra.training.models import build_model

__all__ = ["ModelSpec", "load_model_dir", "save_model_dir"]

WEIGHTS = "weights.safetensors"
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


def save_model_dir(path: str | Path, spec: ModelSpec, state_dict: dict[str, torch.Tensor], pre: FeaturePipeline) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # DDP wraps the module as "module.": store the plain module's names.
    clean = {k.removeprefix("module."): v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(clean, str(path / WEIGHTS))
    (path / SPEC).write_text(spec.model_dump_json(indent=2))
    (path / PREPROCESS).write_text(pre.to_json())
    return path


def load_model_dir(path: str | Path) -> tuple[ModelSpec, nn.Module, FeaturePipeline]:
    path = Path(path)
    try:
        spec = ModelSpec.model_validate(json.loads((path / SPEC).read_text()))
        pre = FeaturePipeline.from_json((path / PREPROCESS).read_text())
    except FileNotFoundError as e:
        raise InvalidInput(f"{path} is not a model directory: {Path(e.filename).name} is missing") from None
    module = build_model(spec.family, spec.input_dim, spec.output_dim, spec.params)
    module.load_state_dict(load_file(str(path / WEIGHTS)))
    module.eval()
    return spec, module, pre
