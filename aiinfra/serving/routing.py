"""Which version answers a request: the champion, or the challenger for a canary share of requests.

The choice is a stable hash of the request id (SHA-256, not Python's per-process ``hash``), so a
client that retries with the same ``X-Request-ID`` reaches the same version on every replica.
"""

from __future__ import annotations

import hashlib

__all__ = ["goes_to_challenger", "stable_fraction"]


def stable_fraction(key: str) -> float:
    """A number in [0, 1) that depends only on ``key``."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def goes_to_challenger(model: str, request_id: str, share: float) -> bool:
    return share > 0 and stable_fraction(f"{model}:{request_id}") < share
