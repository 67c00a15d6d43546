"""aiinfra: the whole model lifecycle on one Ray cluster.

``import aiinfra`` is cheap: Ray, torch and the rest load only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PlatformConfig", "connect", "load_config", "__version__"]

if TYPE_CHECKING:
    from aiinfra.config import PlatformConfig, load_config
    from aiinfra.platform import connect


_LAZY = {"PlatformConfig": "aiinfra.config", "load_config": "aiinfra.config", "connect": "aiinfra.platform"}


def __getattr__(name: str) -> Any:
    # Resolved on first use (PEP 562), so that importing any aiinfra module never drags in Ray.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aiinfra' has no attribute {name!r}")
