"""A multilayer perceptron over the preprocessed tabular feature vector.

One output (a logit) for binary classification, one per class for multiclass, one value for regression.
"""

from __future__ import annotations

from torch import nn

from aiinfra.training.families import _check, family


@family("tabular_mlp")
def tabular_mlp(input_dim: int, output_dim: int, *, hidden: list[int] | None = None, dropout: float = 0.0,
                batch_norm: bool = False) -> nn.Module:
    hidden = [32, 16] if hidden is None else list(hidden)
    _check(all(isinstance(h, int) and 1 <= h <= 65_536 for h in hidden), "hidden: layer widths must be integers in 1..65536, got {}", hidden)
    _check(0.0 <= dropout < 1.0, "dropout must be in [0, 1), got {}", dropout)
    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)
