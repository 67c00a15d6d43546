"""Bearer tokens with roles for the HTTP API.

A token is ``aii_<id>_<secret>``: the id finds the row, the secret is checked against its
SHA-256 (tokens are 256 random bits, so a fast hash is enough; only the hash is stored) with a
constant-time comparison. Roles: ``admin`` may do everything; ``predict`` may call inference
routes; ``feedback`` may post labels.

The embedded default makes one admin token the first time the platform starts and leaves it
in ``$AIINFRA_HOME/api_token`` (mode 600), where the CLI finds it when ``AIINFRA_API_TOKEN``
is unset.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiinfra.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from aiinfra.storage import MetadataDB, Migration

__all__ = ["ROLES", "Principal", "TokenStore", "ensure_admin_token", "read_token_file"]

ROLES = ("admin", "predict", "feedback")
Role = Literal["admin", "predict", "feedback"]
PREFIX = "aii"
COMPONENT = "api_tokens"
MIGRATIONS = (
    Migration(1, ("""CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at DOUBLE PRECISION
    )""",)),
)
# What each route family needs; admin is allowed everywhere.
PERMISSIONS = {"predict": {"admin", "predict"}, "feedback": {"admin", "feedback", "predict"}, "admin": {"admin"}}


@dataclass(frozen=True)
class Principal:
    token_id: str
    role: str

    def require(self, action: str) -> None:
        if self.role not in PERMISSIONS[action]:
            raise Forbidden(f"a {self.role!r} token may not {action}; ask for a token with one of the roles "
                            f"{sorted(PERMISSIONS[action])}")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Tokens in the metadata DB, with a short-lived in-memory copy for the request path.

    ``refresh_s`` bounds how long a revoked token may still be accepted by a running server.
    """

    def __init__(self, db: MetadataDB, *, refresh_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.refresh_s = refresh_s
        self._clock = clock
        db.ensure_schema(COMPONENT, MIGRATIONS)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, str]] = {}
        self._loaded_at = -float("inf")

    def create(self, role: str = "predict", *, who: str = "unknown") -> str:
        """A new token; the only time its secret is visible."""
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO api_tokens (id, secret_sha256, role, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                (token_id, _hash(secret), role, self._clock(), who),
            )
        self._loaded_at = -float("inf")
        return f"{PREFIX}_{token_id}_{secret}"

    def revoke(self, token_id: str) -> None:
        with self.db.transaction() as tx:
            if not tx.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._clock(), token_id)):
                raise NotFound(f"no active token with id {token_id!r}")
        self._loaded_at = -float("inf")

    def list(self) -> list[dict[str, object]]:
        return self.db.query("SELECT id, role, created_at, created_by, revoked_at FROM api_tokens ORDER BY created_at")

    def has_admin(self) -> bool:
        return bool(self.db.query("SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL"))

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer ...`` header value.

        Raises:
            Unauthorized: no header, not a bearer token, malformed, unknown or revoked.
        """
        if not authorization:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        parts = token.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            raise Unauthorized("malformed token")
        _, token_id, secret = parts
        entry = self._lookup(token_id)
        if entry is None or not hmac.compare_digest(entry[0], _hash(secret)):
            raise Unauthorized("invalid or revoked token")
        return Principal(token_id=token_id, role=entry[1])

    def _lookup(self, token_id: str) -> tuple[str, str] | None:
        now = self._clock()
        with self._lock:
            stale = now - self._loaded_at > self.refresh_s
            if stale or (token_id not in self._cache and now - self._loaded_at > 0.5):
                rows = self.db.query("SELECT id, secret_sha256, role FROM api_tokens WHERE revoked_at IS NULL")
                self._cache = {r["id"]: (r["secret_sha256"], r["role"]) for r in rows}
                self._loaded_at = now
            return self._cache.get(token_id)


def ensure_admin_token(tokens: TokenStore, token_file: Path, *, who: str = "aiinfra") -> str | None:
    """First start of the embedded default: make an admin token and leave it in ``token_file`` (mode 600).

    Does nothing when the file exists or an admin token already does. Returns the new token, if any.
    """
    if token_file.exists() or tokens.has_admin():
        return None
    token = tokens.create("admin", who=who)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = token_file.with_name(f".{token_file.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, token_file)
    return token


def read_token_file(token_file: Path) -> str | None:
    try:
        return token_file.read_text().strip() or None
    except OSError:
        return None
