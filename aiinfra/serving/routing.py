"""Which version answers a request: the champion, or the challenger for a canary share of requests.

The choice is a keyed hash of the request id: HMAC-SHA256 under the platform's routing key (a random
secret kept in the metadata DB, ``TokenStore.routing_key``), so every replica on every node routes a
request id the same way, a client that retries with the same ``X-Request-ID`` reaches the same version,
and no client can compute in advance which ids reach the challenger (with a public hash it could pick
ids for the arm it wants to label).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["goes_to_challenger", "stable_fraction"]


def stable_fraction(key: str, secret: bytes = b"") -> float:
    """A number in [0, 1) that depends only on ``key`` (and ``secret``: without it, a plain SHA-256)."""
    if secret:
        digest = hmac.new(secret, key.encode(), hashlib.sha256).digest()
    else:
        digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def goes_to_challenger(model: str, request_id: str, share: float, secret: bytes = b"") -> bool:
    return share > 0 and stable_fraction(f"{model}:{request_id}", secret) < share
