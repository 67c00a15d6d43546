"""A training checkpoint as a directory of safetensors and JSON: never a pickle.

    model.safetensors      the weights after the epoch
    best.safetensors       the weights of the best epoch so far (early stopping returns these)
    optimizer.safetensors  the optimizer's tensors (Adam's moments, step counts)
    state.json             epoch, early-stopping state, the optimizer's scalars and param groups,
                           the RNG derivation, and the per-epoch history

The RNG is reseeded at every epoch from (seed, rank, epoch), so a run resumed at epoch k draws
exactly what an uninterrupted run draws from epoch k on; state.json records that derivation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["TrainingState", "epoch_seed", "load_checkpoint", "optimizer_from_flat", "optimizer_to_flat", "save_checkpoint"]

MODEL = "model.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % 2**31


@dataclass
class TrainingState:
    epoch: int = -1  # the last completed epoch
    best_val_loss: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "history": self.history, "seed": self.seed,
            "rng": "reseeded each epoch with epoch_seed(seed, rank, epoch)",
        }


def _unwrapped_cpu_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP wraps the module as "module.": store the plain module's names.
    return {k.removeprefix("module."): v.detach().cpu().contiguous() for k, v in state_dict.items()}


def optimizer_to_flat(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, model: torch.nn.Module, best: dict[str, torch.Tensor] | None,
                    optimizer: torch.optim.Optimizer, state: TrainingState) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = _unwrapped_cpu_tensors(model.state_dict())
    save_file(weights, str(directory / MODEL))
    save_file(_unwrapped_cpu_tensors(best) if best is not None else weights, str(directory / BEST))
    tensors, meta = optimizer_to_flat(optimizer.state_dict())
    save_file(tensors, str(directory / OPTIMIZER))
    (directory / STATE).write_text(json.dumps({**state.to_json(), "optimizer": meta}))
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any], TrainingState]:
    """(weights, best weights, optimizer state dict, training state)."""
    directory = Path(directory)
    meta = json.loads((directory / STATE).read_text())
    optimizer = optimizer_from_flat(load_file(str(directory / OPTIMIZER)), meta["optimizer"])
    state = TrainingState(epoch=meta["epoch"], best_val_loss=meta["best_val_loss"], best_epoch=meta["best_epoch"],
                          bad_epochs=meta["bad_epochs"], history=meta["history"], seed=meta.get("seed", 0))
    return load_file(str(directory / MODEL)), load_file(str(directory / BEST)), optimizer, state
