"""The skeleton's training path: a DataFrame -> Ray Data -> TorchTrainer (DDP) -> a model directory.

The data platform and training issues deepen each step (validated, versioned datasets;
point-in-time features; Tune; the promotion gate); the shape stays.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiinfra.config import PlatformConfig
from aiinfra.data.transforms import FeaturePipeline
from aiinfra.registry.types import FieldSpec, Signature
from aiinfra.training.model_dir import ModelSpec, load_model_dir, save_model_dir

__all__ = ["TrainResult", "evaluate_binary", "signature_for", "train_tabular"]


@dataclass
class TrainResult:
    run_id: str
    model_dir: Path
    history: list[dict[str, Any]]


def _to_training_batch(batch: pd.DataFrame, pre: FeaturePipeline, label: str) -> dict[str, np.ndarray]:
    return {"x": pre.transform(batch), "y": batch[label].to_numpy(dtype=np.float32)}


def train_tabular(
    config: PlatformConfig,
    train_df: pd.DataFrame,
    pre: FeaturePipeline,
    *,
    label: str,
    out_dir: Path,
    num_workers: int = 2,
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 256,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    use_gpu: bool = False,
) -> TrainResult:
    """Fit a tabular MLP with DDP on ``num_workers`` Ray Train workers (gloo on CPU, NCCL on GPU)."""
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from aiinfra.training.loop import train_loop

    run_id = f"train-{uuid.uuid4().hex[:12]}"  # unique: Train V2 silently resumes a reused name
    ds = ray.data.from_pandas(train_df, override_num_blocks=max(2, num_workers)).map_batches(
        _to_training_batch, fn_kwargs={"pre": pre, "label": label}, batch_format="pandas", batch_size=4096
    )
    spec = ModelSpec(family="tabular_mlp", params=params or {"hidden": [32, 16]}, input_dim=pre.output_dim, output_dim=1)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "family": spec.family, "params": spec.params, "input_dim": spec.input_dim, "output_dim": spec.output_dim,
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
        },
        # Half a CPU per worker leaves room for Ray Data to feed them on a 2-core machine.
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 0.5}),
        run_config=RunConfig(name=run_id, storage_path=f"{config.storage_root.rstrip('/')}/checkpoints"),
        datasets={"train": ds},
    )
    result = _fit_keeping_sigint(trainer)
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as ckpt:
        from safetensors.torch import load_file

        state = load_file(str(Path(ckpt) / "weights.safetensors"))
    save_model_dir(out_dir, spec, state, pre)
    history = [dict(m) for m in (result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else [result.metrics])]
    return TrainResult(run_id=run_id, model_dir=out_dir, history=history)


def _fit_keeping_sigint(trainer: Any) -> Any:
    """Ray Train installs its own SIGINT handler and leaves it behind after ``fit``; a later
    Ctrl-C would then be swallowed. Put the caller's handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)


def evaluate_binary(model_dir: Path, df: pd.DataFrame, label: str) -> dict[str, float]:
    """Accuracy, ROC-AUC and log-loss of a saved binary model on held-out rows."""
    import torch
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    _, module, pre = load_model_dir(model_dir)
    with torch.no_grad():
        p = torch.sigmoid(module(torch.from_numpy(pre.transform(df))).squeeze(-1)).numpy()
    y = df[label].to_numpy()
    return {
        "accuracy": float(accuracy_score(y, p >= 0.5)),
        "roc_auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))),
        "holdout_rows": float(len(df)),
    }


def signature_for(pre: FeaturePipeline) -> Signature:
    """Inputs as the fitted features expect them; outputs of a binary classifier."""
    inputs = []
    for f in pre.spec.features:
        last = f.steps[-1]
        categories = getattr(last, "categories", None) if f.kind == "categorical" else None
        inputs.append(FieldSpec(name=f.column, dtype=pre.input_dtypes.get(f.column, "float64"), categories=categories))  # type: ignore[arg-type]
    outputs = [FieldSpec(name="label", dtype="int64"), FieldSpec(name="probability", dtype="float64")]
    return Signature(inputs=inputs, outputs=outputs)
