"""Who a service's audit log names: proved by an API token where one is given, else the calling process.

A client sends a ``Caller`` with each mutating call; the service turns it into the ``who`` it records
(``Identities.who``), so what the log names is decided where the state is written, not by an argument
the caller fills in:

- ``token:<id>`` when the caller presented an API token: the service checks the secret against the
  token store (unknown, revoked or expired: Unauthorized) and, for an action that needs a role
  (approving a protected alias), the token's role and model scope (Forbidden). Only this form is proof.
- otherwise ``<user>@<host> (job <ray job id>)``, or the platform service's name (``autopilot``) instead
  of the user: what a member of the Ray cluster says of itself. Cluster members are trusted (SECURITY.md):
  one can run any code, so it could also write the database; the job id says where in the dashboard to
  look. A ``Caller`` never carries the token's secret into a log or a repr.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
from dataclasses import dataclass, field

from aiinfra.errors import Forbidden, InvalidInput
from aiinfra.identity.roles import PERMISSIONS
from aiinfra.identity.tokens import TokenStore
from aiinfra.service import ray_job_id
from aiinfra.storage import MetadataDB

__all__ = ["Caller", "Identities", "Identity", "this_process"]

TOKEN_PREFIX = "token:"  # what the log names a checked token by; nothing else may take this form
_MAX_PART = 200  # a claimed name is a label, not a payload


@dataclass(frozen=True)
class Caller:
    """What a client says about itself; only ``token`` is checked (and never shown)."""

    process: str
    job: str | None = None
    token: str | None = field(default=None, repr=False)
    service: str | None = None

    def claimed(self) -> str:
        name = (self.service or self.process)[:_MAX_PART]
        return f"{name} (job {self.job[:_MAX_PART]})" if self.job else name


@dataclass(frozen=True)
class Identity:
    """What the log records (``who``), and, for a token issued to someone (``token create --for``), whom."""

    who: str
    person: str | None = None


def this_process(*, token: str | None = None, service: str | None = None) -> Caller:
    """The caller this process is: its user and host, its Ray job if it has joined one, and ``token``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Caller(process=f"{user}@{socket.gethostname()}", job=ray_job_id(), token=token or None, service=service)


class Identities:
    """Turns a ``Caller`` into the ``who`` a service records, checking its token against ``db``'s tokens."""

    def __init__(self, db: MetadataDB) -> None:
        self._db = db
        self._tokens: TokenStore | None = None
        self._lock = threading.Lock()

    def _store(self) -> TokenStore:
        with self._lock:  # made on the first token seen: a registry no token ever calls needs no token table
            if self._tokens is None:
                # Read afresh at every check (refresh_s=0): a token revoked a moment ago approves nothing. Calls
                # with a token are rare here (approvals, requests), unlike on the request path.
                self._tokens = TokenStore(self._db, refresh_s=0.0, background=False)
            return self._tokens

    def who(self, caller: Caller | None, *, action: str | None = None, model: str | None = None,
            purpose: str | None = None) -> str:
        """The audit log's name for ``caller`` (``resolve``'s ``who``)."""
        return self.resolve(caller, action=action, model=model, purpose=purpose).who

    def resolve(self, caller: Caller | None, *, action: str | None = None, model: str | None = None,
                purpose: str | None = None) -> Identity:
        """The audit log's name for ``caller``, and the person its token was issued to, if any.

        Args:
            action: a permission (``aiinfra.identity.roles.PERMISSIONS``) the call needs; it then takes a
                token with a role that has it, scoped to ``model`` or to no model.

        Raises:
            Unauthorized: the token is malformed, unknown, revoked or expired.
            Forbidden: ``action`` needs a token and none was given, or the token's role or scope does not allow it.
        """
        token = caller.token if caller is not None else None
        if token is None:
            if action is not None:
                raise Forbidden(f"to {purpose or action}, send an API token of one of the roles {_roles(action)}: --token-file PATH "
                                f"or AIINFRA_API_TOKEN (`aiinfra token create --role {_least(action)}`)")
            if caller is None:
                return Identity("unknown")
            claimed = caller.claimed()
            if any(ord(c) < 32 or ord(c) == 127 for c in claimed):
                raise InvalidInput("a caller's name may not hold control characters (it is printed in the audit log)")
            if claimed.strip().casefold().startswith(TOKEN_PREFIX):
                raise InvalidInput(f"a caller may not call itself {claimed!r}: the log names {TOKEN_PREFIX}<id> only "
                                   "for a checked API token (send the token instead)")
            return Identity(claimed)
        tokens = self._store()
        principal = tokens.verify(f"Bearer {token}")
        if action is not None:
            principal.require(action, model=model)
        try:
            tokens.flush_last_used()  # `token list` shows the use: one write, and only for calls with a token
        except Exception:  # noqa: BLE001 - bookkeeping; the check above is what matters
            pass
        return Identity(f"{TOKEN_PREFIX}{principal.token_id}", principal.holder)


def _roles(action: str) -> str:
    return ", ".join(sorted(PERMISSIONS[action]))


def _least(action: str) -> str:
    """The role to ask for: the one allowed ``action`` that is not admin."""
    return next((r for r in sorted(PERMISSIONS[action]) if r != "admin"), "admin")
