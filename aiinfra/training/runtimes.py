"""A trained model, loaded and ready to score: one small interface over torch modules and boosted trees.

Every path that runs a model (evaluation, the gate, serving, batch inference, the monitor's reference) asks a
``TrainedModel`` for ``scores(x)`` on the preprocessed inputs and gets the same thing whatever the family:
P(class 1) for binary, class probabilities (n, k) for multiclass, predictions in the target's units for
regression. The weights are read from the libraries' own non-executable formats: safetensors, XGBoost's UBJSON,
LightGBM's text model, ONNX (a graph imported from elsewhere, or one of ours exported or quantized; run by
onnxruntime, ``aiinfra.training.onnx_format``). Nothing here unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aiinfra.errors import InvalidInput

__all__ = ["BoosterModel", "ONNX_FAMILY", "TrainedModel", "TorchModel", "WEIGHTS_FILE", "load_trained_model", "trained_for",
           "tree_model_from_bytes"]

# The weights file of each kind of family, in the model directory.
WEIGHTS_FILE = {"torch": "weights.safetensors", "xgboost": "model.ubj", "lightgbm": "model.txt", "onnx": "model.onnx"}
ONNX_FAMILY = "onnx"


class TrainedModel(Protocol):
    def scores(self, x: np.ndarray) -> np.ndarray: ...

    def to(self, device: str) -> None: ...


class TorchModel:
    """A torch family's module, in eval mode."""

    def __init__(self, module: Any, spec: Any) -> None:
        self.module, self.spec = module, spec

    def scores(self, x: np.ndarray) -> np.ndarray:
        from aiinfra.training.tabular import predict_scores

        return predict_scores(self.module, self.spec, x)

    def to(self, device: str) -> None:
        self.module.to(device)


class BoosterModel:
    """An XGBoost or LightGBM booster. Regression boosters were trained on the standardized target (as the torch
    families are), so their outputs are mapped back with the spec's mean and standard deviation."""

    def __init__(self, family: str, booster: Any, spec: Any) -> None:
        self.family, self.booster, self.spec = family, booster, spec

    def scores(self, x: np.ndarray) -> np.ndarray:
        task, k = self.spec.task, self.spec.output_dim
        if len(x) == 0:
            return np.zeros((0, k) if task == "multiclass" else (0,))
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.family == "xgboost":
            out = self.booster.inplace_predict(x, validate_features=False)
        else:
            out = self.booster.predict(x, num_threads=0)
        out = np.asarray(out, dtype=np.float64)
        if task == "multiclass":
            return out.reshape(len(x), k)
        out = out.reshape(len(x))
        return out * self.spec.target_std + self.spec.target_mean if task == "regression" else out

    def to(self, device: str) -> None:
        """Boosters score on the CPU even in a deployment given a GPU: the pinned xgboost is the CPU build, and for
        trees of this size the copy to the device would cost more than the scoring saves."""


def tree_model_from_bytes(family: str, raw: bytes) -> Any:
    """A booster from its stored bytes; InvalidInput when they are not a model of that library."""
    try:
        if family == "xgboost":
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(bytearray(raw))
            return booster
        import lightgbm

        return lightgbm.Booster(model_str=raw.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - each library raises its own error type for a bad file
        raise InvalidInput(f"the stored {family} model cannot be read: {str(e).splitlines()[0][:300]}") from None


def trained_for(family: str, booster: Any) -> tuple[str, int, int]:
    """(task, classes, inputs) a booster was trained for, read from the model itself."""
    if family == "xgboost":
        learner = json.loads(booster.save_config())["learner"]
        objective = learner["objective"]["name"]
        classes = int(learner["learner_model_param"].get("num_class", 0) or 0)
        inputs = booster.num_features()
    else:
        # The text model's header ("objective=multiclass num_class:3"), not dump_model(): that serializes every tree.
        header = booster.model_to_string(num_iteration=1).split("\nTree=", 1)[0]
        fields = dict(line.split("=", 1) for line in header.splitlines() if "=" in line)
        objective = fields.get("objective", "").split(" ")[0]
        classes = int(fields.get("num_class", "1"))
        inputs = booster.num_feature()
    if objective.startswith("binary"):
        task = "binary"
    elif objective.startswith(("multi", "softmax")):
        task = "multiclass"
    else:
        task = "regression"
    return task, classes if task == "multiclass" else 1, int(inputs)


def _check_trained_for(spec: Any, booster: Any) -> None:
    task, classes, inputs = trained_for(spec.family, booster)
    problems = []
    if task != spec.task:
        problems.append(f"it was trained for {task}, model.json says {spec.task}")
    elif task == "multiclass" and classes != spec.output_dim:
        problems.append(f"it predicts {classes} classes, model.json says {spec.output_dim}")
    if inputs != spec.input_dim:
        problems.append(f"it takes {inputs} inputs, the transforms make {spec.input_dim}")
    if problems:
        raise InvalidInput(f"the stored {spec.family} model does not match its model.json: {'; '.join(problems)}")


def load_trained_model(directory: Path, spec: Any) -> TrainedModel:
    from aiinfra.training.trees import is_tree_family

    if spec.family == ONNX_FAMILY:
        from aiinfra.training.onnx_format import OnnxModel, inspect_graph

        raw = (directory / WEIGHTS_FILE[ONNX_FAMILY]).read_bytes()
        info = inspect_graph(raw, what=f"{directory.name}/{WEIGHTS_FILE[ONNX_FAMILY]}")
        if info.width != spec.input_dim:
            raise InvalidInput(f"the stored ONNX model takes {info.width} inputs, model.json says {spec.input_dim}")
        return OnnxModel(raw, spec)

    if is_tree_family(spec.family):
        raw = (directory / WEIGHTS_FILE[spec.family]).read_bytes()
        booster = tree_model_from_bytes(spec.family, raw)
        _check_trained_for(spec, booster)
        return BoosterModel(spec.family, booster, spec)
    from safetensors.torch import load_file

    from aiinfra.training.models import build_model

    module = build_model(spec.family, spec.input_dim, spec.output_dim, spec.params)
    module.load_state_dict(load_file(str(directory / WEIGHTS_FILE["torch"])))
    module.eval()
    return TorchModel(module, spec)
