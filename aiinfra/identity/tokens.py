"""Bearer tokens with roles, an optional model scope and an optional expiry, for the HTTP API.

A token is ``aii_<id>_<secret>``: the id finds the row, the secret is checked against its
SHA-256 (tokens are 256 random bits, so a fast hash is enough; only the hash is stored) with a
constant-time comparison. Roles and what each may do: ``aiinfra.identity.roles``. A token may be
scoped to one model (403 on any other) and may expire (401 "expired" from then on).

The embedded default makes one admin token the first time the platform starts and leaves it
in ``$AIINFRA_HOME/api_token`` (mode 600), where the CLI finds it when ``AIINFRA_API_TOKEN``
is unset.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiinfra.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from aiinfra.identity.roles import PERMISSIONS, ROLES
from aiinfra.names import validate_name
from aiinfra.storage import MetadataDB, Migration

__all__ = ["PERMISSIONS", "ROLES", "NewToken", "Principal", "TokenStore", "ensure_admin_token", "read_token_file"]

log = logging.getLogger(__name__)

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
    # The lifecycle: a model scope and an expiry (NULL: any model, never), and when it was last seen.
    # Rows from before keep NULLs, so existing tokens keep working exactly as they did.
    Migration(2, (
        "ALTER TABLE api_tokens ADD COLUMN model TEXT",
        "ALTER TABLE api_tokens ADD COLUMN expires_at DOUBLE PRECISION",
        "ALTER TABLE api_tokens ADD COLUMN last_used_at DOUBLE PRECISION",
    )),
    # Platform secrets the replicas share: the canary routing key (aiinfra.serving.routing).
    Migration(3, ("""CREATE TABLE platform_keys (
        name TEXT PRIMARY KEY,
        key_hex TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",)),
    # Whom a token was issued to (`token create --for NAME`): approvals can be counted by person.
    Migration(4, ("ALTER TABLE api_tokens ADD COLUMN holder TEXT",)),
)
MAX_HOLDER = 200
# What `token list` shows: everything but the secret's hash.
_LISTED = "id, role, model, holder, created_at, created_by, expires_at, last_used_at, revoked_at"
# Last-used times are written in one batch this often, so a token costs at most one write a minute.
LAST_USED_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Principal:
    token_id: str
    role: str
    model: str | None = None  # the one model this token may act on; None: any
    holder: str | None = None  # whom it was issued to (`token create --for`); None: not said

    def require(self, action: str, *, model: str | None = None) -> None:
        """This token may ``action`` on ``model`` (else Forbidden).

        A scoped token is refused an action that names no model: what it may not see is not
        guessed to be its own model.
        """
        if self.role not in PERMISSIONS[action]:
            raise Forbidden(f"a {self.role!r} token may not {action}; ask for a token with one of the roles "
                            f"{sorted(PERMISSIONS[action])}")
        if self.model is not None and model != self.model:
            # Names only the token's own scope: the caller learns nothing about what else is served.
            raise Forbidden(f"this token is scoped to model {self.model!r}; ask for a token for the model you call")


@dataclass(frozen=True)
class NewToken:
    """A token just made: the only value that holds its secret (``token``)."""

    id: str
    token: str
    role: str
    model: str | None
    expires_at: float | None
    holder: str | None = None


@dataclass(frozen=True)
class _Entry:
    secret_sha256: str
    role: str
    model: str | None
    expires_at: float | None
    holder: str | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Tokens in the metadata DB, with a short-lived in-memory copy for the request path.

    ``refresh_s`` bounds how long a revoked token may still be accepted by a running server.
    Last-used times are kept in memory on the request path and written by a background thread
    every ``last_used_interval_s`` (one transaction for all the tokens used since), so a request
    never waits on a write and a token costs at most one write per interval; ``flush_last_used``
    writes them now (tests, and ``background=False``, which starts no thread), ``stop`` ends the thread. What a process
    saw in its last interval before it stopped is lost: "last used" is accurate to about a minute.
    """

    def __init__(self, db: MetadataDB, *, refresh_s: float = 5.0, clock: Callable[[], float] = time.time,
                 last_used_interval_s: float = LAST_USED_INTERVAL_S, background: bool = True) -> None:
        self.db = db
        self.refresh_s = refresh_s
        self.last_used_interval_s = last_used_interval_s
        self._clock = clock
        self._background = background
        db.ensure_schema(COMPONENT, MIGRATIONS)
        self._lock = threading.Lock()
        self._cache: dict[str, _Entry] = {}
        self._loaded_at = -float("inf")
        self._used: dict[str, float] = {}  # token id -> last use not written yet
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._routing_key: bytes | None = None

    def routing_key(self) -> bytes:
        """The platform's canary routing key: made once (by whichever replica asks first), then read by all."""
        if self._routing_key is None:
            with self.db.transaction() as tx:
                tx.execute("INSERT INTO platform_keys (name, key_hex, created_at) VALUES ('routing', ?, ?) "
                           "ON CONFLICT (name) DO NOTHING", (secrets.token_hex(32), self._clock()))
            rows = self.db.query("SELECT key_hex FROM platform_keys WHERE name = 'routing'")
            self._routing_key = bytes.fromhex(rows[0]["key_hex"])
        return self._routing_key

    def create(self, role: str = "predict", *, who: str = "unknown", model: str | None = None,
               expires_in_s: float | None = None, holder: str | None = None) -> str:
        """A new token; the only time its secret is visible.

        Args:
            model: the one model it may act on (None: any).
            expires_in_s: seconds from now until it is refused as expired (None: never).
        """
        return self.issue(role, who=who, model=model, expires_in_s=expires_in_s, holder=holder).token

    def issue(self, role: str = "predict", *, who: str = "unknown", model: str | None = None,
              expires_in_s: float | None = None, holder: str | None = None) -> NewToken:
        """``create``, with the new token's id, scope and expiry beside it.

        ``holder``: the person (or system) it is issued to, for approvals a policy counts by person.
        """
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if model is not None:
            validate_name("model name", model)
        if holder is not None and (not isinstance(holder, str) or not holder.strip() or len(holder) > MAX_HOLDER
                                   or any(ord(c) < 32 or ord(c) == 127 for c in holder)):
            raise InvalidInput(f"a token's holder is a name of 1 to {MAX_HOLDER} printable characters")
        if expires_in_s is not None and not expires_in_s > 0:
            raise InvalidInput(f"a token's lifetime must be positive, got {expires_in_s!r} s")
        now = self._clock()
        expires_at = now + expires_in_s if expires_in_s is not None else None
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO api_tokens (id, secret_sha256, role, created_at, created_by, model, expires_at, holder) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (token_id, _hash(secret), role, now, who, model, expires_at, holder.strip() if holder else None),
            )
        self._loaded_at = -float("inf")
        return NewToken(id=token_id, token=f"{PREFIX}_{token_id}_{secret}", role=role, model=model,
                        expires_at=expires_at, holder=holder.strip() if holder else None)

    def revoke(self, token_id: str) -> None:
        with self.db.transaction() as tx:
            if not tx.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._clock(), token_id)):
                raise NotFound(f"no active token with id {token_id!r}")
        self._loaded_at = -float("inf")

    def list(self) -> list[dict[str, object]]:
        """Every token, oldest first, without its secret or the secret's hash."""
        return self.db.query(f"SELECT {_LISTED} FROM api_tokens ORDER BY created_at, id")

    def has_admin(self) -> bool:
        """An admin token exists that can still administer everything (not revoked, expired or scoped)."""
        return bool(self.db.query(
            "SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL AND model IS NULL "
            "AND (expires_at IS NULL OR expires_at > ?)", (self._clock(),)))

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer ...`` header value.

        Raises:
            Unauthorized: no header, not a bearer token, malformed, unknown, revoked or expired.
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
        if entry is None or not hmac.compare_digest(entry.secret_sha256, _hash(secret)):
            raise Unauthorized("invalid or revoked token")
        now = self._clock()
        # Checked after the secret: only the token's holder learns that it expired.
        if entry.expires_at is not None and now >= entry.expires_at:
            raise Unauthorized(f"token {token_id} expired; ask for a new one (`aiinfra token create`)")
        self._record_use(token_id, now)
        return Principal(token_id=token_id, role=entry.role, model=entry.model, holder=entry.holder)

    def _lookup(self, token_id: str) -> _Entry | None:
        now = self._clock()
        with self._lock:
            stale = now - self._loaded_at > self.refresh_s
            if stale or (token_id not in self._cache and now - self._loaded_at > 0.5):
                rows = self.db.query(
                    "SELECT id, secret_sha256, role, model, expires_at, holder FROM api_tokens WHERE revoked_at IS NULL")
                self._cache = {r["id"]: _Entry(r["secret_sha256"], r["role"], r["model"], r["expires_at"], r["holder"])
                               for r in rows}
                self._loaded_at = now
            return self._cache.get(token_id)

    # -- last used: in memory on the request path, written in batches --------------------------------------

    def _record_use(self, token_id: str, now: float) -> None:
        with self._lock:
            self._used[token_id] = now
            if self._background and self._flusher is None:
                self._flusher = threading.Thread(target=_flush_every, name="token-last-used", daemon=True,
                                                 args=(weakref.ref(self), self._stop, self.last_used_interval_s))
                self._flusher.start()

    def flush_last_used(self) -> int:
        """Write the last use of every token seen since the previous flush; returns how many."""
        with self._lock:
            used, self._used = self._used, {}
        if not used:
            return 0
        try:
            with self.db.transaction() as tx:
                for token_id, at in sorted(used.items()):
                    # Another replica may have written a later use: keep the latest.
                    tx.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ? "
                               "AND (last_used_at IS NULL OR last_used_at < ?)", (at, token_id, at))
        except Exception:
            with self._lock:  # kept for the next try, unless a newer use came meanwhile
                for token_id, at in used.items():
                    self._used[token_id] = max(at, self._used.get(token_id, at))
            raise
        return len(used)


    def stop(self) -> None:
        """Stop the background writer and write what it has not yet (the DB stays open: it is the caller's)."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self.flush_last_used()


def _flush_every(store_ref: weakref.ref[TokenStore], stop: threading.Event, interval_s: float) -> None:
    """The background writer of a store's last uses; it holds the store weakly, so it ends with it."""
    while not stop.wait(interval_s):
        store = store_ref()
        if store is None:
            return
        try:
            store.flush_last_used()
        except Exception as e:  # a DB away for a while must not stop the bookkeeping for good
            log.warning("could not record tokens' last use (%s); retrying in %.0f s", e, interval_s)
        del store  # not held while waiting


def ensure_admin_token(tokens: TokenStore, token_file: Path, *, who: str = "aiinfra") -> str | None:
    """First start of the embedded default: make an admin token and leave it in ``token_file`` (mode 600).

    Does nothing when the file exists or an admin token already does. Returns the new token, if any.
    """
    if token_file.exists() or tokens.has_admin():
        return None
    token = tokens.create("admin", who=who)
    token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # AIINFRA_HOME: its owner's only
    # A new name each time, opened only if nothing is there and never through a link: a file or symlink
    # another user placed at a predictable name cannot receive the secret. fchmod: exactly 600 whatever the umask.
    tmp = token_file.with_name(f".{token_file.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, token_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return token


def read_token_file(token_file: Path) -> str | None:
    try:
        return token_file.read_text().strip() or None
    except OSError:
        return None
