"""Smaller models from a trained one: structured pruning of an MLP, and a student trained on a teacher's answers.

Plain functions on numpy arrays and torch modules (no Ray, no registry); ``aiinfra.pipelines.variants`` wires them
to a registered parent, its training rows and its holdout.

- **Pruning** (``prune_mlp``): torch's ``prune.ln_structured`` ranks each hidden layer's neurons by the L1 norm of
  their incoming weights and masks the weakest ``amount`` of them; the masked neurons are then cut out for real
  (the layer's rows, the next layer's columns, a batch norm's entries), so the pruned model is smaller and faster,
  not the same size with zeros in it. A fine-tune (``fit``) on the training rows recovers what the cut lost.
- **Distillation** (``fit`` with ``soft``): the student learns from the teacher's scores on the training rows mixed
  with the true labels (``alpha`` weighs the teacher): for classifiers the teacher's probabilities as soft targets,
  for regression the teacher's (standardized) predictions.

``fit`` is a single-process loop with early stopping on the validation rows: the students here are small MLPs on
tables that already fit in memory (the training pipeline loads them the same way); a larger student is better
trained through ``aiinfra train`` with Ray Train.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from aiinfra.errors import InvalidInput

__all__ = ["fit", "prune_mlp", "soft_targets"]


def _linear_layers(module: nn.Module) -> list[nn.Linear]:
    if not isinstance(module, nn.Sequential) or not all(isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout, nn.BatchNorm1d))
                                                         for m in module):
        raise InvalidInput("structured pruning applies to tabular_mlp models (a stack of Linear layers)")
    return [m for m in module if isinstance(m, nn.Linear)]


def prune_mlp(module: nn.Module, amount: float) -> tuple[nn.Module, list[int]]:
    """A copy of ``module`` with ``amount`` (0 < amount < 1) of every hidden layer's neurons removed, and the new
    hidden widths. Each layer keeps at least one neuron."""
    if not 0.0 < amount < 1.0:
        raise InvalidInput(f"prune amount must be between 0 and 1 (the share of hidden neurons to remove), got {amount}")
    from torch.nn.utils import prune

    model = copy.deepcopy(module).cpu().eval()
    deep = getattr(model, "deep", model)  # wide & deep: the deep part is pruned, the linear part kept
    linears = _linear_layers(deep)
    if len(linears) < 2:
        raise InvalidInput("this MLP has no hidden layer to prune")
    layers = list(deep)
    widths: list[int] = []
    for i, layer in enumerate(linears[:-1]):
        n_remove = min(int(round(amount * layer.out_features)), layer.out_features - 1)
        prune.ln_structured(layer, name="weight", amount=n_remove, n=1, dim=0)  # masks whole rows: whole neurons
        keep = torch.nonzero(layer.weight_mask.sum(dim=1) > 0).squeeze(1)
        prune.remove(layer, "weight")
        _shrink_outputs(layer, keep)
        position = layers.index(layer)
        for follower in layers[position + 1:]:  # a batch norm between this layer and the next is cut the same way
            if isinstance(follower, nn.BatchNorm1d):
                _shrink_norm(follower, keep)
            if isinstance(follower, nn.Linear):
                break
        _shrink_inputs(linears[i + 1], keep)
        widths.append(len(keep))
    return model, widths


def _shrink_outputs(layer: nn.Linear, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.data[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.data[keep].clone())
    layer.out_features = len(keep)


def _shrink_inputs(layer: nn.Linear, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.data[:, keep].clone())
    layer.in_features = len(keep)


def _shrink_norm(norm: nn.BatchNorm1d, keep: torch.Tensor) -> None:
    norm.weight = nn.Parameter(norm.weight.data[keep].clone())
    norm.bias = nn.Parameter(norm.bias.data[keep].clone())
    norm.running_mean = norm.running_mean[keep].clone()
    norm.running_var = norm.running_var[keep].clone()
    norm.num_features = len(keep)


def soft_targets(task: str, scores: np.ndarray, target_mean: float = 0.0, target_std: float = 1.0) -> np.ndarray:
    """A teacher's scores as the student's targets: probabilities as they are, predictions standardized."""
    if task == "regression":
        return ((scores - target_mean) / target_std).astype(np.float32)
    return np.asarray(scores, dtype=np.float32)


def _loss(task: str, out: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor | None, alpha: float) -> torch.Tensor:
    if task == "binary":
        logit = out.squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logit, hard)
        return loss if soft is None else (1 - alpha) * loss + alpha * nn.functional.binary_cross_entropy_with_logits(logit, soft)
    if task == "multiclass":
        loss = nn.functional.cross_entropy(out, hard)
        return loss if soft is None else (1 - alpha) * loss + alpha * nn.functional.cross_entropy(out, soft)
    pred = out.squeeze(-1)
    loss = nn.functional.mse_loss(pred, hard)
    return loss if soft is None else (1 - alpha) * loss + alpha * nn.functional.mse_loss(pred, soft)


def fit(module: nn.Module, task: str, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
        soft: np.ndarray | None = None, alpha: float = 0.5, epochs: int = 20, batch_size: int = 256, lr: float = 0.003,
        patience: int = 4, seed: int = 0) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train ``module`` in place on (x, y) (and the teacher's ``soft`` targets), keeping the weights of the epoch
    with the lowest validation loss (on the true labels); returns it and the per-epoch history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y)
    st = None if soft is None else torch.from_numpy(soft)
    xv, yv = torch.from_numpy(np.ascontiguousarray(x_val, np.float32)), torch.from_numpy(y_val)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    best, best_state, since, history = float("inf"), copy.deepcopy(module.state_dict()), 0, []
    for epoch in range(epochs):
        module.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = _loss(task, module(xt[idx]), yt[idx], None if st is None else st[idx], alpha)
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        module.eval()
        with torch.no_grad():
            val = float(_loss(task, module(xv), yv, None, alpha))
        history.append({"epoch": epoch, "train_loss": total / max(len(xt), 1), "val_loss": val})
        if val < best - 1e-6:
            best, best_state, since = val, copy.deepcopy(module.state_dict()), 0
        else:
            since += 1
            if since >= patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    return module, history
