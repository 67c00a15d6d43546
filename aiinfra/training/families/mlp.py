"""A multilayer perceptron over the preprocessed tabular feature vector.

One output (a logit) for binary classification, one per class for multiclass, one value for regression.
With ``wide: true`` a linear layer from the inputs straight to the outputs is added to the network's answer
(wide & deep, Cheng et al. 2016): a logistic or linear regression is then one of the models it can learn, so
on data where that is the true model (the demo's churn) it is not left below the linear baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from aiinfra.training.families import _check, family


class WideAndDeep(nn.Module):
    def __init__(self, deep: nn.Sequential, wide: nn.Linear) -> None:
        super().__init__()
        self.deep, self.wide = deep, wide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deep(x) + self.wide(x)


@family("tabular_mlp")
def tabular_mlp(input_dim: int, output_dim: int, *, hidden: list[int] | None = None, dropout: float = 0.0,
                batch_norm: bool = False, wide: bool = False) -> nn.Module:
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
    _check(isinstance(wide, bool), "wide must be true or false, got {}", wide)
    deep = nn.Sequential(*layers)
    return WideAndDeep(deep, nn.Linear(input_dim, output_dim)) if wide else deep
