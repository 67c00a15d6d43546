"""How much memory a served row takes, roughly and cheaply: what byte bounds on buffers of rows count.

Both the replicas' samplers (aiinfra.serving.sampling) and the monitor's pending predictions bound their
buffers by bytes as well as rows: a model with wide rows (hundreds of features, long strings) would
otherwise reach a row bound only after exhausting memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["approx_bytes"]


def approx_bytes(row: Mapping[str, Any]) -> int:
    size = 64
    for key, value in row.items():
        size += 50 + len(key)
        if isinstance(value, (str, bytes)):
            size += len(value)
        elif isinstance(value, (list, tuple, dict)):
            size += 16 * len(value)
    return size
