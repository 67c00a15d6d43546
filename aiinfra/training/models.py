"""Model families behind one small interface: a family name plus hyperparameters gives an nn.Module.

A new family is one function registered in ``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from aiinfra.errors import InvalidInput

__all__ = ["FAMILIES", "build_model"]


def tabular_mlp(input_dim: int, output_dim: int, *, hidden: list[int] | None = None, dropout: float = 0.0) -> nn.Module:
    """An MLP over the preprocessed feature vector; ``output_dim`` 1 for binary (a logit) or regression."""
    hidden = [32, 16] if hidden is None else hidden
    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


FAMILIES: dict[str, Callable[..., nn.Module]] = {"tabular_mlp": tabular_mlp}


def build_model(family: str, input_dim: int, output_dim: int, params: dict[str, Any] | None = None) -> nn.Module:
    try:
        factory = FAMILIES[family]
    except KeyError:
        raise InvalidInput(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    try:
        return factory(input_dim, output_dim, **(params or {}))
    except TypeError as e:
        raise InvalidInput(f"invalid hyperparameters for {family}: {e}") from None


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
