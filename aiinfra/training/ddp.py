"""The per-worker DDP epoch loop for Ray Train's TorchTrainer: gloo on CPU, NCCL on GPU.

A plain function of a ``LoopConfig`` (as the dict Ray Train hands each worker); ``aiinfra.training.ray_train``
wires it to TorchTrainer. The trainer's settings are the validated ``TrainerSettings``, so their
defaults live in one place. Data arrives as this worker's shards of the Ray Data datasets "train" and (optionally) "val", with
columns ``x`` (the preprocessed feature vector) and ``y``.

Every epoch ends with a checkpoint (see ``checkpoints``); after a worker failure Ray Train
restarts the group and this function resumes from the last one, not from epoch 0. Validation
loss is summed over all workers (an all-reduce), so every rank takes the same early-stopping
decision at the same epoch.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from aiinfra.training.checkpoint_ledger import CheckpointLedger, CheckpointRecords
from aiinfra.training.checkpoints import TrainingState, epoch_seed, load_checkpoint, save_checkpoint
from aiinfra.training.config import Task, TrainerSettings
from aiinfra.training.models import build_model, seed_everything

__all__ = ["LoopConfig", "loss_function", "make_optimizer", "node_memory_bytes", "shard_bytes", "shard_cache_budget",
           "should_cache", "train_loop"]


class LoopConfig(BaseModel):
    """What every worker needs: the model to build, the data's shape and the trainer's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    input_dim: int = Field(ge=1)
    output_dim: int = Field(ge=1)
    has_val: bool
    trainer: TrainerSettings
    # The datasets' row counts (all workers together), for the shard-cache decision; 0: not known, cache as before.
    train_rows: int = Field(0, ge=0)
    val_rows: int = Field(0, ge=0)
    # Where each checkpoint's digest is recorded and checked (checkpoint_ledger.py); None: not recorded.
    checkpoints: CheckpointRecords | None = None


def shard_bytes(rows: int, num_workers: int, input_dim: int, task: str) -> int:
    """One worker's share of ``rows`` as the loop's tensors: float32 inputs and the label (int64 for classes)."""
    per_worker = -(-rows // max(num_workers, 1))
    return per_worker * (4 * input_dim + (8 if task == "multiclass" else 4))


def node_memory_bytes() -> int:
    """This node's memory: psutil's total, or the container's cgroup limit where that is lower (a Kubernetes pod
    sees the whole machine in /proc/meminfo but is killed at its own limit)."""
    import psutil

    total = int(psutil.virtual_memory().total)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def shard_cache_budget(explicit: int | None, local_workers: int) -> int:
    """``shard_cache_bytes`` as given, else a quarter of the node's memory shared by its training workers."""
    if explicit is not None:
        return explicit
    return node_memory_bytes() // 4 // max(local_workers, 1)


def should_cache(setting: bool | str, need_bytes: int, budget_bytes: int) -> bool:
    """``cache_shards``: forced either way, or (``auto``) when twice the shard fits the budget: the batches and
    their concatenation coexist for a moment while the cache is built. A shard of unknown size (0) is cached."""
    if isinstance(setting, bool):
        return setting
    return 2 * need_bytes <= budget_bytes


def loss_function(task: str) -> nn.Module:
    """Summed, not averaged: the loop divides by the global row count itself."""
    if task == "binary":
        return nn.BCEWithLogitsLoss(reduction="sum")
    if task == "multiclass":
        return nn.CrossEntropyLoss(reduction="sum")
    return nn.MSELoss(reduction="sum")


def _outputs(model: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    out = model(x)
    return out if task == "multiclass" else out.squeeze(-1)


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _load_shard(shard: Any, dtypes: dict[str, torch.dtype]) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's whole shard as two CPU tensors (one streaming pass, large batches). Kept in host memory even
    on GPU: each batch is moved to the device when it is used, so the device never holds the whole shard."""
    xs, ys = [], []
    for batch in shard.iter_torch_batches(batch_size=65_536, dtypes=dtypes, device="cpu"):
        xs.append(batch["x"])
        ys.append(batch["y"])
    if not xs:
        raise RuntimeError("this worker's data shard is empty: fewer rows than workers?")
    return torch.cat(xs), torch.cat(ys)


def _cached_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                    device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(y))
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        yield {"x": x[idx].to(device, non_blocking=True), "y": y[idx].to(device, non_blocking=True)}


def train_loop(config: dict[str, Any]) -> None:
    """One worker's run; ``config`` is a ``LoopConfig`` as a dict (what Ray Train passes on)."""
    # Ray here, not at the top: the CLI imports pipelines.train (-> ray_train -> this module) before
    # connect() sets RAY_AUTH_MODE, which Ray reads once, when imported.
    import ray.train
    import ray.train.torch

    run = LoopConfig.model_validate(config)
    t = run.trainer
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    task, seed, epochs, batch_size = run.task, t.seed, t.epochs, t.batch_size
    use_amp = t.use_gpu and t.bf16 and device.type == "cuda"

    seed_everything(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(run.family, run.input_dim, run.output_dim, run.params)
    state, best, optimizer_state = TrainingState(seed=seed), None, None
    ledger = CheckpointLedger.of(run.checkpoints)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure, or a resumed run
        with checkpoint.as_directory() as d, (ledger.verified(d, where=checkpoint.path) if ledger is not None
                                              else contextlib.nullcontext(d)) as checked:
            weights, best, optimizer_state, state = load_checkpoint(checked)
        model.load_state_dict(weights)
    start_epoch = state.epoch + 1

    model = ray.train.torch.prepare_model(model)  # DDP: gradients are averaged across workers in backward()
    optimizer = make_optimizer(t.optimizer, model.parameters(), t.lr, t.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_fn = loss_function(task)
    y_dtype = torch.int64 if task == "multiclass" else torch.float32
    dtypes = {"x": torch.float32, "y": y_dtype}
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if run.has_val else None
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    # A shard that fits the worker's budget is read once and kept as tensors: re-streaming it from Ray Data
    # every epoch cost 2 to 3 times the epoch's compute on small tabular data (benchmarks/train.py). One that
    # does not is streamed every epoch, so a table larger than a worker's memory still trains.
    world = ctx.get_world_size()
    need = (shard_bytes(run.train_rows, world, run.input_dim, task)
            + (shard_bytes(run.val_rows, world, run.input_dim, task) if run.has_val else 0))
    budget = shard_cache_budget(t.shard_cache_bytes, ctx.get_local_world_size())
    cached = should_cache(t.cache_shards, need, budget)
    if rank == 0:
        print(f"aiinfra: each worker's shard is about {need / 2**20:.1f} MiB; "
              + ("cached in memory" if cached else "streamed from Ray Data every epoch")
              + f" (cache_shards={t.cache_shards}, budget {budget / 2**20:.0f} MiB per worker)", flush=True)
    train_cache = _load_shard(train_shard, dtypes) if cached else None
    val_cache = _load_shard(val_shard, dtypes) if cached and val_shard is not None else None

    for epoch in range(start_epoch, epochs):
        seed_everything(epoch_seed(seed, rank, epoch))
        started_at = time.time()  # consecutive starts give the full cycle, checkpoint and report included
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        if train_cache is not None:
            batches = _cached_batches(*train_cache, batch_size, t.shuffle, epoch_seed(seed, rank, epoch), device)
        else:
            local = {"local_shuffle_buffer_size": 4 * batch_size, "local_shuffle_seed": epoch_seed(seed, rank, epoch)}
            batches = train_shard.iter_torch_batches(batch_size=batch_size, dtypes=dtypes, device=device,
                                                     **(local if t.shuffle else {}))
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            n = len(batch["y"])
            with autocast():
                loss = loss_fn(_outputs(model, batch["x"], task).float(), batch["y"])
            (loss / n).backward()  # the batch mean; DDP then averages over workers
            optimizer.step()
            total += float(loss.detach())
            count += n
        total, count = _all_reduce_sum([total, float(count)], device)
        train_loss = total / max(count, 1.0)

        val_loss = train_loss
        if val_shard is not None:
            model.eval()
            v_total, v_count = 0.0, 0
            with torch.no_grad(), autocast():
                val_batches = (_cached_batches(*val_cache, max(batch_size, 1024), False, 0, device) if val_cache is not None
                               else val_shard.iter_torch_batches(batch_size=max(batch_size, 1024), dtypes=dtypes, device=device))
                for batch in val_batches:
                    v_total += float(loss_fn(_outputs(model, batch["x"], task).float(), batch["y"]))
                    v_count += len(batch["y"])
            v_total, v_count = _all_reduce_sum([v_total, float(v_count)], device)
            val_loss = v_total / max(v_count, 1.0)

        improved = state.best_val_loss is None or val_loss < state.best_val_loss - t.min_delta
        if improved:
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
        else:
            state.bad_epochs += 1
        stop = t.patience is not None and state.bad_epochs >= t.patience
        state.epoch = epoch
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "best_val_loss": state.best_val_loss,
            "best_epoch": state.best_epoch, "start_epoch": start_epoch, "epoch_time_s": time.perf_counter() - t0,
            "epoch_started_at": started_at,
            "world_size": world, "stopped_early": int(stop), "shard_cached": int(cached),
        }
        state.history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model, best, optimizer, state)
                if ledger is not None:  # recorded before it is reported: never visible unrecorded
                    ledger.record(tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            break
