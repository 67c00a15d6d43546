"""One training run on Ray Train: prepared tables -> Ray Data -> TorchTrainer (DDP), or XGBoostTrainer /
LightGBMTrainer for the tree families -> the best weights.

``fit`` is what a plain run and every Tune trial call. It returns the best epoch's weights (the best round's
trees) and the full per-epoch (per-round) history as recorded in the last checkpoint, so a run that was
restarted after a worker failure still reports every epoch once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs
import torch

from aiinfra.data.transforms import FeaturePipeline
from aiinfra.training.checkpoint_ledger import CheckpointLedger, CheckpointRecords
from aiinfra.training.checkpoints import load_checkpoint
from aiinfra.training.config import TrainConfig
from aiinfra.training.ddp import LoopConfig, train_loop
from aiinfra.training.tabular import to_training_batch
from aiinfra.training.tree_loop import STATE as TREE_STATE
from aiinfra.training.tree_loop import TreeLoopConfig, best_model_bytes, load_tree_checkpoint, tree_loop
from aiinfra.training.trees import is_tree_family, tree_params

__all__ = ["FitResult", "PreparedData", "fit", "fit_keeping_sigint", "load_checkpoint_at", "loop_config", "make_datasets",
           "planned_reports", "storage_path"]

# Ray is imported inside the functions: the CLI imports pipelines.train, which imports this module, before
# connect() sets RAY_AUTH_MODE, and Ray reads that once, when it is imported.


@dataclass
class PreparedData:
    """What the pipeline hands to training: split rows, fitted transforms, and the label encoding."""

    train: Any  # a DataFrame, or a Ray Dataset when the table was built on Ray Data (train_rows / val_rows count it)
    val: Any
    pre: FeaturePipeline
    label: str
    task: str
    class_labels: list[Any]
    target_mean: float = 0.0
    target_std: float = 1.0
    left_out: dict[str, str] = field(default_factory=dict)  # features: auto's columns left out, and why
    train_rows: int | None = None  # the Datasets' row counts (a DataFrame's is its len)
    val_rows: int | None = None

    @property
    def n_train(self) -> int:
        return len(self.train) if isinstance(self.train, pd.DataFrame) else int(self.train_rows or 0)

    @property
    def n_val(self) -> int:
        return len(self.val) if isinstance(self.val, pd.DataFrame) else int(self.val_rows or 0)

    @property
    def output_dim(self) -> int:
        return len(self.class_labels) if self.task == "multiclass" else 1


@dataclass
class FitResult:
    run_name: str
    best_state: dict[str, torch.Tensor] | bytes  # a torch state dict, or a tree family's serialized booster
    history: list[dict[str, Any]]
    wall_s: float
    cpu_seconds: float  # reserved by the workers for the run's wall time
    gpu_seconds: float
    checkpoint_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_datasets(data: PreparedData, num_workers: int) -> dict[str, Any]:
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    import ray.data

    kwargs = {"pre": data.pre, "label": data.label, "task": data.task, "class_labels": data.class_labels,
              "target_mean": data.target_mean, "target_std": data.target_std}
    out = {}
    for name, rows, n in (("train", data.train, data.n_train), ("val", data.val, data.n_val)):
        if n == 0:
            continue
        # Transformed once, not once per epoch: a materialized dataset only streams its blocks to
        # the workers again (the per-epoch transform cost was most of a small epoch's time).
        if isinstance(rows, pd.DataFrame):
            ds = ray.data.from_pandas(rows, override_num_blocks=max(2, num_workers))
            out[name] = ds.map_batches(to_training_batch, fn_kwargs=kwargs, batch_format="pandas", batch_size=4096).materialize()
        else:  # a table built on Ray Data stays there; its batches converted by pyarrow, as in one process
            out[name] = rows.map_batches(_arrow_training_batch, fn_kwargs=kwargs, batch_format="pyarrow",
                                         batch_size=4096).materialize()
    return out


def _arrow_training_batch(batch: Any, **kwargs: Any) -> dict[str, Any]:
    # pyarrow's conversion, not Ray's pandas batches (pandas' Arrow-backed dtypes): the numbers the fitted
    # transforms saw when they were fitted.
    return to_training_batch(batch.to_pandas(), **kwargs)


def loop_config(cfg: TrainConfig, data: PreparedData, checkpoints: CheckpointRecords | None = None) -> LoopConfig:
    return LoopConfig(task=cfg.task, family=cfg.model.family, params=cfg.model.params,
                      input_dim=data.pre.output_dim, output_dim=data.output_dim, has_val=data.n_val > 0,
                      trainer=cfg.trainer, train_rows=data.n_train, val_rows=data.n_val, checkpoints=checkpoints)


def planned_reports(cfg: TrainConfig) -> int:
    """How many reports a run that is not stopped early makes: one per epoch, or per ``checkpoint_every`` rounds."""
    if is_tree_family(cfg.model.family):
        p = tree_params(cfg.model.family, cfg.model.params)
        return -(-p.num_boost_round // p.checkpoint_every)
    return cfg.trainer.epochs


def storage_path(storage_root: str, leaf: str) -> str:
    """``leaf`` under the storage root, as Ray Train and Tune get it: a root's query (``s3://b/p?endpoint_override=
    ...&region=...``) stays at the end, where pyarrow reads it; appended after it, the leaf would become part
    of the last option (region ``us-east-1/checkpoints``) and the files would land beside ``leaf``."""
    base, sep, query = storage_root.partition("?")
    return f"{base.rstrip('/')}/{leaf}{sep}{query}"


def _read_checkpoint(d: str | Path, ledger: CheckpointLedger | None, *, where: str,
                     ) -> tuple[dict[str, torch.Tensor] | bytes, list[dict[str, Any]]]:
    if ledger is not None:
        with ledger.verified(d, where=where) as checked:
            return _read_checkpoint(checked, None, where=where)
    if (Path(d) / TREE_STATE).exists():
        raw, tree_state = load_tree_checkpoint(d)
        return best_model_bytes(raw, tree_state), tree_state.history
    _, best, _, state = load_checkpoint(d)
    return best, state.history


def load_checkpoint_at(path: str, storage_root: str, *, checkpoints: CheckpointRecords | None = None,
                       ) -> tuple[dict[str, torch.Tensor] | bytes, list[dict[str, Any]]]:
    """(best weights, history) from a checkpoint directory under the storage root (local or s3/gs), checked
    against the digests ``checkpoints`` names first (ArtifactCorrupted when it is not one its run recorded)."""
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    import ray.train

    fs = None
    if "://" in storage_root and not storage_root.startswith("file://"):
        fs, _ = pyarrow.fs.FileSystem.from_uri(storage_root)
    with ray.train.Checkpoint(path, filesystem=fs).as_directory() as d:
        return _read_checkpoint(d, CheckpointLedger.of(checkpoints), where=path)


def fit(cfg: TrainConfig, data: PreparedData, *, storage_root: str, run_name: str | None = None,
        num_workers: int | None = None, callbacks: list[Any] | None = None,
        datasets: dict[str, Any] | None = None, records_namespace: str | None = None) -> FitResult:
    """Train with DDP on ``num_workers`` Ray Train workers (gloo on CPU, NCCL on GPU).

    ``run_name`` must be new: Train V2 silently resumes a run whose name exists under the storage path.
    ``records_namespace``: the platform namespace whose registry records each checkpoint's digest, checked
    before any checkpoint is loaded (checkpoint_ledger.py); None records none (a plain run outside the platform).
    """
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    # Ray Train's controller polls the workers every 2 s by default, and each ray.train.report()
    # waits for that poll: a floor of 2 s per epoch. Propagated to the controller from here.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    t = cfg.trainer
    workers = num_workers or t.num_workers
    run_name = run_name or f"train-{uuid.uuid4().hex[:12]}"
    records = CheckpointRecords(namespace=records_namespace, run=run_name) if records_namespace else None
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    common = dict(
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path(storage_root, "checkpoints"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            # The latest checkpoint carries the best weights too, so two suffice (one being written).
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets=datasets if datasets is not None else make_datasets(data, workers),
    )
    family = cfg.model.family
    if is_tree_family(family):
        # A plain dict at Ray Train's boundary; each worker validates it back into a TreeLoopConfig.
        loop = TreeLoopConfig(task=cfg.task, family=family, params=cfg.model.params, num_classes=len(data.class_labels),
                              has_val=data.n_val > 0, trainer=t, checkpoints=records).model_dump()
        # "val" whole on every worker: each computes the same validation loss (see tree_loop).
        split = DataConfig(datasets_to_split=["train"])
        if family == "xgboost":
            from ray.train.xgboost import XGBoostTrainer

            trainer: Any = XGBoostTrainer(tree_loop, train_loop_config=loop, dataset_config=split, **common)
        else:
            from ray.train.lightgbm import LightGBMTrainer

            trainer = LightGBMTrainer(tree_loop, train_loop_config=loop, dataset_config=split, **common)
    else:
        from ray.train.torch import TorchTrainer

        # A plain dict at Ray Train's boundary; each worker validates it back into a LoopConfig.
        trainer = TorchTrainer(train_loop, train_loop_config=loop_config(cfg, data, records).model_dump(), **common)
    t0 = time.perf_counter()
    result = fit_keeping_sigint(trainer)
    wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        best, history = _read_checkpoint(d, CheckpointLedger.of(records), where=result.checkpoint.path)
    return FitResult(
        run_name=run_name, best_state=best, history=history, wall_s=wall,
        cpu_seconds=wall * workers * t.cpus_per_worker, gpu_seconds=wall * workers * t.gpus_per_worker if t.use_gpu else 0.0,
        checkpoint_path=result.checkpoint.path,
    )


def fit_keeping_sigint(trainer: Any) -> Any:
    """Ray Train installs its own SIGINT handler and leaves it behind after ``fit``; a later
    Ctrl-C would then be swallowed. Put the caller's handler back."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
