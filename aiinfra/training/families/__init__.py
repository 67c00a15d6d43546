"""Model families: each module here registers one with ``@family("name")``.

A new family is one new file in this package: a function ``(input_dim, output_dim, **hyperparameters) ->
nn.Module`` decorated with ``@family``. ``aiinfra.training.models`` imports every module here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["FAMILIES", "family"]

FAMILIES: dict[str, Callable[..., nn.Module]] = {}


def family(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def register(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        FAMILIES[name] = factory
        return factory

    return register


def _check(condition: bool, message: str, *args: Any) -> None:
    """Hyperparameter checks raise ValueError; ``build_model`` turns them into InvalidInput."""
    if not condition:
        raise ValueError(message.format(*args))
