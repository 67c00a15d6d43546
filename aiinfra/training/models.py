"""Model families behind one small interface: a family name plus hyperparameters gives an nn.Module.

The families live in ``aiinfra.training.families`` (one file each); this module finds them all.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from aiinfra.errors import InvalidInput
from aiinfra.training import families
from aiinfra.training.families import FAMILIES

__all__ = ["FAMILIES", "build_model", "seed_everything"]

for _mod in pkgutil.iter_modules(families.__path__):
    importlib.import_module(f"{families.__name__}.{_mod.name}")


def build_model(family: str, input_dim: int, output_dim: int, params: dict[str, Any] | None = None) -> nn.Module:
    """Raises InvalidInput naming the family or the hyperparameter that is wrong."""
    try:
        factory = FAMILIES[family]
    except KeyError:
        raise InvalidInput(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    try:
        return factory(input_dim, output_dim, **(params or {}))
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"invalid hyperparameters for {family}: {e}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
