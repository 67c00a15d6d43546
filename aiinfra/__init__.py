"""aiinfra: the whole model lifecycle on one Ray cluster.

``import aiinfra`` is cheap: Ray, torch and the rest load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PlatformConfig", "connect", "load_config", "__version__"]

if TYPE_CHECKING:
    from aiinfra.config import PlatformConfig, load_config
    from aiinfra.platform import connect


def __getattr__(name: str) -> Any:
    if name in ("PlatformConfig", "load_config"):
        from aiinfra import config

        return getattr(config, name)
    if name == "connect":
        from aiinfra.platform import connect

        return connect
    raise AttributeError(f"module 'aiinfra' has no attribute {name!r}")
