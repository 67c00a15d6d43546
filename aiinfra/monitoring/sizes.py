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
    # On every sampled request's first row: type() identity and one pass over the keys, not isinstance per value.
    size = 64 + 50 * len(row) + sum(map(len, row))
    for value in row.values():
        kind = type(value)
        if kind is str or kind is bytes:
            size += len(value)
        elif kind is list or kind is tuple or kind is dict:
            size += 16 * len(value)
    return size
