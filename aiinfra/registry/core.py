"""The model registry's logic: a plain class over a MetadataDB and an ArtifactStore.

No Ray here: ``registry.actor`` wraps this class in the named actor, and unit tests use it
directly. Every mutation runs in one write transaction together with its audit entry, so
the log and the state never disagree, and a crash at any point leaves either the whole
change or none of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from aiinfra.config import format_validation_error
from aiinfra.errors import ArtifactCorrupted, Conflict, Forbidden, InvalidInput, NotFound
from aiinfra.identity.callers import Caller, Identities, Identity
from aiinfra.registry.approvals import AliasPolicy, AliasRequest, Approval, ModelPolicy
from aiinfra.registry.files import StagedUpload
from aiinfra.registry.runs import Run, RunStore
from aiinfra.registry.types import (
    AuditEntry,
    Lineage,
    ModelRef,
    ModelSummary,
    ModelVersion,
    Signature,
    coerce_lineage,
    coerce_metrics,
    coerce_signature,
    parse_ref,
    validate_alias,
    validate_name,
)
from aiinfra.storage import ArtifactStore, DigestLedger, FileDigest, MetadataDB, Migration
from aiinfra.storage.metadata import Transaction

__all__ = ["ModelRegistry", "MIGRATIONS"]

COMPONENT = "registry"

MIGRATIONS = (
    Migration(
        1,
        (
            """CREATE TABLE models (
                name TEXT PRIMARY KEY,
                created_at DOUBLE PRECISION NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE model_versions (
                name TEXT NOT NULL REFERENCES models(name),
                version INTEGER NOT NULL,
                status TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                created_by TEXT NOT NULL,
                artifact_uri TEXT NOT NULL,
                files TEXT NOT NULL,
                metrics TEXT NOT NULL,
                params TEXT NOT NULL,
                signature TEXT,
                lineage TEXT NOT NULL,
                idempotency_key TEXT,
                PRIMARY KEY (name, version)
            )""",
            "CREATE UNIQUE INDEX model_versions_idem ON model_versions (name, idempotency_key)",
            """CREATE TABLE aliases (
                name TEXT NOT NULL REFERENCES models(name),
                alias TEXT NOT NULL,
                version INTEGER NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (name, alias)
            )""",
            """CREATE TABLE audit_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                ts DOUBLE PRECISION NOT NULL,
                who TEXT NOT NULL,
                model TEXT NOT NULL,
                action TEXT NOT NULL,
                version INTEGER,
                before TEXT,
                after TEXT
            )""",
        ),
    ),
    # v2: audit reads are per model, newest first; without the index they scan the whole log.
    Migration(2, ("CREATE INDEX audit_log_model ON audit_log (model, id)",)),
    # v3: an alias may carry the traffic share its holder gets (a canary's), so the router learns the share
    # through the same read as the alias. NULL: the serving config's default.
    Migration(3, ("ALTER TABLE aliases ADD COLUMN share DOUBLE PRECISION",)),
    # v4: the audit log is hash-chained per model (see _row_hash): each row stores its predecessor's hash and
    # its own, so an edited, deleted or inserted row breaks the chain where it happened (`models audit --verify`).
    Migration(4, (
        "ALTER TABLE audit_log ADD COLUMN prev_hash TEXT",
        "ALTER TABLE audit_log ADD COLUMN row_hash TEXT",
    )),
    # v5: protected aliases (approvals.py): each model's policy, and the requests to move a protected alias.
    Migration(5, (
        """CREATE TABLE alias_policies (
            name TEXT NOT NULL REFERENCES models(name),
            alias TEXT NOT NULL,
            policy TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (name, alias)
        )""",
        """CREATE TABLE alias_requests (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL REFERENCES models(name),
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            requested_by TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            status TEXT NOT NULL,
            approvals TEXT NOT NULL,
            needed INTEGER NOT NULL,
            decided_at DOUBLE PRECISION,
            decided_by TEXT
        )""",
        "CREATE INDEX alias_requests_model ON alias_requests (name, status)",
    )),
    # v6: whom the requesting token was issued to, for policies that count approvals by person.
    Migration(6, ("ALTER TABLE alias_requests ADD COLUMN requester_person TEXT",)),
)

GENESIS = "0" * 64  # the prev_hash of a model's first audit row


def _row_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """SHA-256 of the row's content and its predecessor's hash, in one canonical JSON form."""
    body = [prev_hash, repr(float(row["ts"])), row["who"], row["model"], row["action"], row["version"],
            row["before"], row["after"]]
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


def _json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"value is not JSON-serialisable: {e}") from None


_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def _named(who: str, person: str | None) -> str:
    return f"{who} ({person})" if person else who


def _checkpoint_key(run: str, digest: str) -> str:
    validate_name("run name", run)
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidInput("a checkpoint digest is 64 lowercase hex characters")
    return f"checkpoints/{run}/{digest}"


class ModelRegistry:
    """Models, versions 1..n, aliases and the audit log.

    Args:
        db: the metadata DB; this class owns the tables created by ``MIGRATIONS``.
        store: where version files live, under ``models/<name>/<version>/``.
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(self, db: MetadataDB, store: ArtifactStore, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.store = store
        self._clock = clock
        db.ensure_schema(COMPONENT, MIGRATIONS)
        self._seal_unchained()
        # The registry owns experiment runs too: versions name the run that made them.
        self.runs = RunStore(db, clock)
        # Who the audit log names: decided here from the caller's token or process (aiinfra.identity.callers).
        self._identities = Identities(db)
        self._checkpoints = DigestLedger(db)  # the digests of runs' checkpoints (their files are in storage)

    # -- experiment runs (one writer: this class) -----------------------------------------
    def start_run(self, *, caller: Caller | None = None, **kwargs: Any) -> Run:
        return self.runs.start_run(who=self._identities.who(caller), **kwargs)

    def log_epochs(self, run_id: str, epochs: list[dict[str, Any]]) -> int:
        return self.runs.log_epochs(run_id, epochs)

    def record_checkpoint(self, run: str, digest: str) -> None:
        """A training worker wrote a checkpoint of ``run`` with this digest (aiinfra.training.checkpoint_ledger)."""
        self._checkpoints.record_digests({_checkpoint_key(run, digest): digest})

    def checkpoint_recorded(self, run: str, digest: str) -> bool:
        """Whether ``run`` recorded a checkpoint with this digest: only such a checkpoint is loaded."""
        return self._checkpoints.digest(_checkpoint_key(run, digest)) == digest

    def finish_run(self, run_id: str, **kwargs: Any) -> Run:
        return self.runs.finish_run(run_id, **kwargs)

    def get_run(self, run_id: str) -> Run:
        return self.runs.get_run(run_id)

    def list_runs(self, **filters: Any) -> list[Run]:
        return self.runs.list_runs(**filters)

    def compare_runs(self, a: str, b: str) -> dict[str, Any]:
        return self.runs.compare(a, b)

    # -- writes ------------------------------------------------------------------------
    def commit_version(
        self,
        name: str,
        staged: StagedUpload,
        *,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        signature: Signature | dict[str, Any] | None = None,
        lineage: Lineage | dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        caller: Caller | None = None,
    ) -> ModelVersion:
        """Give staged files the next version number and record them.

        Idempotent by ``idempotency_key``: a retry after a crash or a lost reply returns the
        version the first attempt made, never a duplicate.

        Raises:
            InvalidInput: a bad name, metric, param, signature or lineage (checked before
                any storage is touched).
            ArtifactCorrupted: a staged file changed between upload and commit.
        """
        validate_name("model name", name)
        metrics_ = coerce_metrics(metrics)
        params_json = _json(params or {})
        signature_ = coerce_signature(signature)
        lineage_ = coerce_lineage(lineage)
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 256):
            raise InvalidInput("idempotency_key must be a non-empty string of at most 256 characters")
        if not staged.files:
            raise InvalidInput("a model version needs at least one file")

        who = self._identities.who(caller)
        now = self._clock()
        with self.db.transaction() as tx:
            if idempotency_key is not None:
                rows = tx.query(
                    "SELECT version FROM model_versions WHERE name = ? AND idempotency_key = ?",
                    (name, idempotency_key),
                )
                if rows:
                    existing = int(rows[0]["version"])
                    self._discard_staging(staged)
                    return self._load_version(tx, name, existing)
            if not tx.query("SELECT 1 FROM models WHERE name = ?", (name,)):
                tx.execute("INSERT INTO models (name, created_at, created_by) VALUES (?, ?, ?)", (name, now, who))
                self._audit(tx, now, who, name, "create_model", None, None, {"name": name})
            rows = tx.query("SELECT MAX(version) AS v FROM model_versions WHERE name = ?", (name,))
            version = int(rows[0]["v"] or 0) + 1
            prefix = f"models/{name}/{version}"
            for rel, expected in sorted(staged.files.items()):
                # Copying re-reads the staged bytes: what we record is what is stored.
                written = self.store.copy(f"{staged.key}/{rel}", f"{prefix}/{rel}")
                if written != expected:
                    raise ArtifactCorrupted(
                        f"staged file {rel!r} of {name} changed after upload "
                        f"(sha256 {written.sha256}, expected {expected.sha256}); register it again"
                    )
            files = {rel: d.to_dict() for rel, d in sorted(staged.files.items())}
            tx.execute(
                """INSERT INTO model_versions (name, version, status, created_at, created_by, artifact_uri,
                    files, metrics, params, signature, lineage, idempotency_key)
                   VALUES (?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    name,
                    version,
                    now,
                    who,
                    self.store.uri_for(prefix),
                    _json(files),
                    _json(metrics_),
                    params_json,
                    signature_.model_dump_json() if signature_ else None,
                    lineage_.model_dump_json(),
                    idempotency_key,
                ),
            )
            self._audit(
                tx, now, who, name, "register", version, None,
                {"version": version, "files": sorted(files), "metrics": metrics_, "lineage": lineage_.model_dump()},
            )
            result = self._load_version(tx, name, version)
        self._discard_staging(staged)
        return result

    def set_alias(self, name: str, version: int, alias: str, *, share: float | None = None,
                  caller: Caller | None = None) -> ModelVersion:
        """Point ``alias`` at ``version`` (moving it if it points elsewhere). Last writer wins; all are audited.

        Args:
            share: the share of the model's traffic the alias's holder gets (a canary's), read by the router
                with the alias; None leaves it to the serving config.
        """
        validate_name("model name", name)
        alias = validate_alias(alias)
        version = self._check_version_number(version)
        if share is not None and not (isinstance(share, (int, float)) and 0.0 <= float(share) <= 1.0):
            raise InvalidInput(f"alias share must be a number from 0 to 1, got {share!r}")
        who = self._identities.who(caller)
        now = self._clock()
        with self.db.transaction() as tx:
            policy = self._alias_policy(tx, name, alias)
            if policy is not None:
                held = tx.query("SELECT version, share FROM aliases WHERE name = ? AND alias = ?", (name, alias))
                same_share = held and (held[0]["share"] is None if share is None else
                                       held[0]["share"] is not None and float(held[0]["share"]) == float(share))
                # Pointing it where it is, with the share it has, changes nothing; a new share moves traffic.
                if not (held and int(held[0]["version"]) == version and same_share):
                    raise Forbidden(f"alias {alias!r} of {name!r} is protected ({policy.approvals} approval(s)): "
                                    f"request the move with `aiinfra models request {name} {version} {alias}` and have "
                                    "an approver approve it")
            return self._move_alias(tx, now, who, name, alias, version, share)

    def _move_alias(self, tx: Transaction, now: float, who: str, name: str, alias: str, version: int,
                    share: float | None, *, request: str | None = None) -> ModelVersion:
        target = self._load_version(tx, name, version)
        if target.status == "archived":
            raise Conflict(f"{name}@{version} is archived; an alias can only point at an active version")
        rows = tx.query("SELECT version, share FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        before = ({"alias": alias, "version": int(rows[0]["version"]),
                   **({"share": rows[0]["share"]} if rows[0]["share"] is not None else {})} if rows else None)
        tx.execute(
            "INSERT INTO aliases (name, alias, version, updated_at, share) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at, "
            "share = excluded.share",
            (name, alias, version, now, None if share is None else float(share)),
        )
        self._audit(
            tx, now, who, name, "set_alias", version, before,
            {"alias": alias, "version": version, **({"share": float(share)} if share is not None else {}),
             **({"request": request} if request else {})},
        )
        return self._load_version(tx, name, version)

    # -- protected aliases (approvals.py) -----------------------------------------------------------
    @staticmethod
    def _alias_policy(q: MetadataDB | Transaction, name: str, alias: str) -> AliasPolicy | None:
        rows = q.query("SELECT policy FROM alias_policies WHERE name = ? AND alias = ?", (name, alias))
        return AliasPolicy.model_validate_json(rows[0]["policy"]) if rows else None

    def set_policy(self, name: str, policy: ModelPolicy | dict[str, Any], *, caller: Caller | None = None) -> ModelPolicy:
        """Replace the model's alias protection (an empty policy removes it); audited with before and after."""
        validate_name("model name", name)
        if not isinstance(policy, ModelPolicy):
            try:
                policy = ModelPolicy.model_validate(policy)
            except ValidationError as e:
                raise InvalidInput(format_validation_error("alias policy", e)) from None
        for alias in policy.aliases:
            validate_alias(alias)
        current = self._policy(self.db, name)
        # Protecting an unprotected model takes nothing; changing or lifting a protection takes an admin token
        # (else lifting it and moving the alias would be two calls around the approvers).
        guarded = bool(current.aliases) and policy != current
        who = self._identities.who(caller, action="admin" if guarded else None, model=name,
                                   purpose=f"change the protection of {name}'s aliases")
        now = self._clock()
        with self.db.transaction() as tx:
            if not tx.query("SELECT 1 FROM models WHERE name = ?", (name,)):
                raise NotFound(f"model {name!r} is not registered")
            before = self._policy(tx, name)
            if before != current:
                raise Conflict(f"the alias policy of {name!r} changed meanwhile; look at it again and retry")
            tx.execute("DELETE FROM alias_policies WHERE name = ?", (name,))
            for alias, p in policy.aliases.items():
                tx.execute("INSERT INTO alias_policies (name, alias, policy, updated_at) VALUES (?, ?, ?, ?)",
                           (name, alias, p.model_dump_json(), now))
            self._audit(tx, now, who, name, "set_policy", None, before.model_dump() if before.aliases else None,
                        policy.model_dump() if policy.aliases else None)
        return policy

    def get_policy(self, name: str) -> ModelPolicy:
        validate_name("model name", name)
        self._require_model(name)
        return self._policy(self.db, name)

    @staticmethod
    def _policy(q: MetadataDB | Transaction, name: str) -> ModelPolicy:
        rows = q.query("SELECT alias, policy FROM alias_policies WHERE name = ? ORDER BY alias", (name,))
        return ModelPolicy(aliases={r["alias"]: AliasPolicy.model_validate_json(r["policy"]) for r in rows})

    def request_alias(self, name: str, version: int, alias: str, *, caller: Caller | None = None, reason: str = "") -> AliasRequest:
        """A request to point a protected ``alias`` at ``version``: the pending one for that move if there is
        one (a retried request is the same request), else a new one."""
        validate_name("model name", name)
        alias = validate_alias(alias)
        version = self._check_version_number(version)
        if not isinstance(reason, str) or len(reason) > 1000:
            raise InvalidInput("reason must be text of at most 1,000 characters")
        requester = self._identities.resolve(caller)
        who = requester.who
        now = self._clock()
        with self.db.transaction() as tx:
            self._expire(tx, now, name)
            policy = self._alias_policy(tx, name, alias)
            if policy is None:
                self._load_version(tx, name, version)  # NotFound first, for an unknown model or version
                raise InvalidInput(f"alias {alias!r} of {name!r} is not protected: set it directly "
                                   f"(`aiinfra models alias {name} {version} {alias}`)")
            target = self._load_version(tx, name, version)
            if target.status == "archived":
                raise Conflict(f"{name}@{version} is archived; an alias can only point at an active version")
            rows = tx.query("SELECT * FROM alias_requests WHERE name = ? AND alias = ? AND version = ? AND status = 'pending'",
                            (name, alias, version))
            if rows:
                return self._row_to_request(rows[0])
            request_id = f"req-{uuid.uuid4().hex[:12]}"
            tx.execute(
                "INSERT INTO alias_requests (id, name, alias, version, requested_by, reason, created_at, expires_at,"
                " status, approvals, needed, requester_person) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', '[]', ?, ?)",
                (request_id, name, alias, version, who, reason, now, now + policy.expires, policy.approvals,
                 requester.person),
            )
            self._audit(tx, now, who, name, "request_alias", version, None,
                        {"request": request_id, "alias": alias, "version": version, "needed": policy.approvals,
                         **({"reason": reason} if reason else {})})
            return self._load_request(tx, request_id)

    def approve(self, request_id: str, *, caller: Caller | None = None) -> AliasRequest:
        """Approve a pending request; the approval that reaches the policy's count moves the alias (same transaction).

        Raises:
            Forbidden: ``caller`` brings no API token of the approver (or admin) role for the request's model,
                or asked for the move itself and the policy does not allow self-approval.
        """
        approver = self._decider(request_id, caller, "approve")
        who, person = approver.who, approver.person
        now = self._clock()
        with self.db.transaction() as tx:
            request = self._pending(tx, request_id, now)
            policy = self._alias_policy(tx, request.model, request.alias)
            needed = request.needed if policy is None else policy.approvals
            by_person = policy is not None and policy.distinct_people
            if by_person and person is None:
                raise Forbidden(f"approvals of {request.model}@{request.alias} are counted by person: approve with a "
                                "token issued to you (`aiinfra token create --role approver --for NAME`)")
            own = who == request.requested_by or (by_person and person == request.requested_by_person)
            if own and not (policy is not None and policy.self_approval):
                raise Forbidden(f"{_named(who, person)} asked for {request_id} and may not approve it; another "
                                "approver must")
            if any(a.who == who or (by_person and a.person == person) for a in request.approvals):
                raise Conflict(f"{_named(who, person)} has already approved {request_id} "
                               f"({len(request.approvals)} of {needed})")
            approvals = [*request.approvals, Approval(who=who, at=now, person=person)]
            tx.execute("UPDATE alias_requests SET approvals = ? WHERE id = ?",
                       (json.dumps([a.model_dump() for a in approvals]), request_id))
            self._audit(tx, now, who, request.model, "approve", request.version, None,
                        {"request": request_id, "alias": request.alias, "approvals": len(approvals), "needed": needed,
                         **({"person": person} if person else {})})
            if len(approvals) >= needed:
                self._move_alias(tx, now, who, request.model, request.alias, request.version, None, request=request_id)
                tx.execute("UPDATE alias_requests SET status = 'applied', decided_at = ?, decided_by = ? WHERE id = ?",
                           (now, who, request_id))
            return self._load_request(tx, request_id)

    def refuse(self, request_id: str, *, caller: Caller | None = None, reason: str = "") -> AliasRequest:
        """Refuse a pending request; it takes the same token as approving it."""
        who = self._decider(request_id, caller, "refuse").who
        now = self._clock()
        with self.db.transaction() as tx:
            request = self._pending(tx, request_id, now)
            tx.execute("UPDATE alias_requests SET status = 'refused', decided_at = ?, decided_by = ?, reason = ? WHERE id = ?",
                       (now, who, (request.reason + ("; " if request.reason and reason else "") + reason)[:2000], request_id))
            self._audit(tx, now, who, request.model, "refuse", request.version, None,
                        {"request": request_id, "alias": request.alias, **({"reason": reason} if reason else {})})
            return self._load_request(tx, request_id)

    def list_requests(self, name: str, *, pending_only: bool = False) -> list[AliasRequest]:
        validate_name("model name", name)
        self._require_model(name)
        with self.db.transaction() as tx:
            self._expire(tx, self._clock(), name)
            rows = tx.query("SELECT * FROM alias_requests WHERE name = ?" + (" AND status = 'pending'" if pending_only else "")
                            + " ORDER BY created_at DESC, id", (name,))
            return [self._row_to_request(r) for r in rows]

    def get_request(self, request_id: str) -> AliasRequest:
        return self._load_request(self.db, request_id)

    def _decider(self, request_id: str, caller: Caller | None, verb: str) -> Identity:
        # Checked here, where the alias moves: an approval is the approver token's, whatever the client says.
        # Before the transaction: the token lookup reads the token table on its own connection.
        model = self._load_request(self.db, request_id).model
        return self._identities.resolve(caller, action="approve", model=model, purpose=f"{verb} {request_id}")

    def _pending(self, tx: Transaction, request_id: str, now: float) -> AliasRequest:
        request = self._load_request(tx, request_id)
        self._expire(tx, now, request.model)
        request = self._load_request(tx, request_id)
        if request.status != "pending":
            raise Conflict(f"request {request_id} is {request.status}" + (
                f" (by {request.decided_by})" if request.decided_by and request.status != "expired" else "")
                + "; make a new one with `aiinfra models request`")
        return request

    def _expire(self, tx: Transaction, now: float, name: str) -> None:
        """Pending requests past their time become expired, each audited (the alias stays where it is)."""
        for row in tx.query("SELECT id, version, alias FROM alias_requests WHERE name = ? AND status = 'pending' "
                            "AND expires_at <= ?", (name, now)):
            tx.execute("UPDATE alias_requests SET status = 'expired', decided_at = ? WHERE id = ?", (now, row["id"]))
            self._audit(tx, now, "registry", name, "request_expired", int(row["version"]), None,
                        {"request": row["id"], "alias": row["alias"]})

    def _load_request(self, q: MetadataDB | Transaction, request_id: str) -> AliasRequest:
        if not isinstance(request_id, str) or not request_id.startswith("req-") or len(request_id) > 40:
            raise InvalidInput(f"{request_id!r} is not a request id (they look like req-0123456789ab)")
        rows = q.query("SELECT * FROM alias_requests WHERE id = ?", (request_id,))
        if not rows:
            raise NotFound(f"no alias request {request_id!r}")
        return self._row_to_request(rows[0])

    @staticmethod
    def _row_to_request(row: dict[str, Any]) -> AliasRequest:
        return AliasRequest(id=row["id"], model=row["name"], alias=row["alias"], version=int(row["version"]),
                            requested_by=row["requested_by"], requested_by_person=row.get("requester_person"),
                            reason=row["reason"], created_at=row["created_at"],
                            expires_at=row["expires_at"], status=row["status"],
                            approvals=[Approval.model_validate(a) for a in json.loads(row["approvals"])],
                            needed=int(row["needed"]), decided_at=row["decided_at"], decided_by=row["decided_by"])

    def remove_alias(self, name: str, alias: str, *, caller: Caller | None = None) -> None:
        """Remove an alias; a protected one only with an admin token (it would stop what follows it, unapproved)."""
        validate_name("model name", name)
        alias = validate_alias(alias)
        protected = self._alias_policy(self.db, name, alias) is not None
        who = self._identities.who(caller, action="admin" if protected else None, model=name,
                                   purpose=f"remove the protected alias {name}@{alias}")
        now = self._clock()
        with self.db.transaction() as tx:
            rows = tx.query("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            if not rows:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            tx.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            self._audit(
                tx, now, who, name, "remove_alias", int(rows[0]["version"]),
                {"alias": alias, "version": int(rows[0]["version"])}, None,
            )

    def archive(self, name: str, version: int, *, caller: Caller | None = None, reason: str = "") -> ModelVersion:
        """Mark a version archived. Its files and rows stay; nothing is ever silently deleted.

        Raises:
            Conflict: an alias still points at the version (move it first, so serving never
                follows an alias to an archived model).
        """
        validate_name("model name", name)
        version = self._check_version_number(version)
        who = self._identities.who(caller)
        now = self._clock()
        with self.db.transaction() as tx:
            current = self._load_version(tx, name, version)
            if current.aliases:
                raise Conflict(
                    f"{name}@{version} still holds alias(es) {', '.join(current.aliases)}; move them before archiving"
                )
            if current.status == "archived":
                return current
            tx.execute("UPDATE model_versions SET status = 'archived' WHERE name = ? AND version = ?", (name, version))
            self._audit(tx, now, who, name, "archive", version, {"status": "active"}, {"status": "archived", "reason": reason})
            return self._load_version(tx, name, version)

    # -- reads -------------------------------------------------------------------------
    def get(self, ref: str | ModelRef) -> ModelVersion:
        """Resolve ``name@3``, ``name@champion`` or ``name`` (newest active version)."""
        r = parse_ref(ref)
        if r.version is not None:
            version = r.version
        elif r.alias is not None:
            rows = self.db.query("SELECT version FROM aliases WHERE name = ? AND alias = ?", (r.name, r.alias))
            if not rows:
                self._require_model(r.name)
                raise NotFound(f"model {r.name!r} has no alias {r.alias!r}")
            version = int(rows[0]["version"])
        else:
            rows = self.db.query(
                "SELECT MAX(version) AS v FROM model_versions WHERE name = ? AND status = 'active'", (r.name,)
            )
            if rows[0]["v"] is None:
                self._require_model(r.name)
                raise NotFound(f"model {r.name!r} has no active version")
            version = int(rows[0]["v"])
        return self._load_version(self.db, r.name, version)

    def find_by_idempotency_key(self, name: str, key: str) -> ModelVersion | None:
        validate_name("model name", name)
        rows = self.db.query("SELECT version FROM model_versions WHERE name = ? AND idempotency_key = ?", (name, key))
        return self._load_version(self.db, name, int(rows[0]["version"])) if rows else None

    def list_models(self) -> list[ModelSummary]:
        models = self.db.query(
            """SELECT m.name, m.created_at, MAX(v.version) AS latest, COUNT(v.version) AS n
               FROM models m LEFT JOIN model_versions v ON v.name = m.name
               GROUP BY m.name, m.created_at ORDER BY m.name"""
        )
        aliases: dict[str, dict[str, int]] = {}
        for row in self.db.query("SELECT name, alias, version FROM aliases ORDER BY alias"):
            aliases.setdefault(row["name"], {})[row["alias"]] = int(row["version"])
        return [
            ModelSummary(
                name=m["name"],
                created_at=m["created_at"],
                latest_version=m["latest"],
                version_count=int(m["n"]),
                aliases=aliases.get(m["name"], {}),
            )
            for m in models
        ]

    def list_versions(self, name: str, *, include_archived: bool = True) -> list[ModelVersion]:
        validate_name("model name", name)
        self._require_model(name)
        rows = self.db.query("SELECT * FROM model_versions WHERE name = ? ORDER BY version", (name,))
        aliases = self._aliases_by_version(self.db, name)
        versions = [self._row_to_version(r, aliases.get(int(r["version"]), [])) for r in rows]
        return [v for v in versions if include_archived or v.status == "active"]

    def audit(self, name: str) -> list[AuditEntry]:
        validate_name("model name", name)
        self._require_model(name)
        rows = self.db.query("SELECT * FROM audit_log WHERE model = ? ORDER BY id", (name,))
        return [
            AuditEntry(
                id=r["id"], ts=r["ts"], who=r["who"], model=r["model"], action=r["action"], version=r["version"],
                before=json.loads(r["before"]) if r["before"] else None,
                after=json.loads(r["after"]) if r["after"] else None,
            )
            for r in rows
        ]

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _check_version_number(version: object) -> int:
        if isinstance(version, bool) or not isinstance(version, int):
            if isinstance(version, str) and version.isdigit():
                version = int(version)
            else:
                raise InvalidInput(f"version must be a positive integer, got {version!r}")
        if version < 1:
            raise InvalidInput(f"version must be a positive integer, got {version}")
        return version

    def _require_model(self, name: str) -> None:
        if not self.db.query("SELECT 1 FROM models WHERE name = ?", (name,)):
            raise NotFound(f"model {name!r} is not registered")

    def _load_version(self, q: MetadataDB | Transaction, name: str, version: int) -> ModelVersion:
        rows = q.query("SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version))
        if not rows:
            if not q.query("SELECT 1 FROM models WHERE name = ?", (name,)):
                raise NotFound(f"model {name!r} is not registered")
            raise NotFound(f"model {name!r} has no version {version}")
        held = q.query("SELECT alias, share FROM aliases WHERE name = ? AND version = ? ORDER BY alias", (name, version))
        shares = {r["alias"]: float(r["share"]) for r in held if r["share"] is not None}
        return self._row_to_version(rows[0], [r["alias"] for r in held], shares)

    @staticmethod
    def _aliases_by_version(q: MetadataDB | Transaction, name: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for row in q.query("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,)):
            out.setdefault(int(row["version"]), []).append(row["alias"])
        return out

    @staticmethod
    def _row_to_version(row: dict[str, Any], aliases: list[str], shares: dict[str, float] | None = None) -> ModelVersion:
        return ModelVersion(
            name=row["name"],
            version=int(row["version"]),
            status=row["status"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            artifact_uri=row["artifact_uri"],
            files={k: FileDigest.from_dict(v) for k, v in json.loads(row["files"]).items()},
            metrics=json.loads(row["metrics"]),
            params=json.loads(row["params"]),
            signature=Signature.model_validate_json(row["signature"]) if row["signature"] else None,
            lineage=Lineage.model_validate_json(row["lineage"]),
            aliases=aliases,
            alias_shares=shares or {},
            idempotency_key=row["idempotency_key"],
        )

    @staticmethod
    def _audit(
        tx: Transaction, ts: float, who: str, model: str, action: str, version: int | None,
        before: dict[str, Any] | None, after: dict[str, Any] | None,
    ) -> None:
        # Inside the mutation's write transaction (one writer at a time on both backends), so the
        # predecessor read here is the model's last row when this one commits.
        last = tx.query("SELECT row_hash FROM audit_log WHERE model = ? ORDER BY id DESC LIMIT 1", (model,))
        prev = (last[0]["row_hash"] if last else None) or GENESIS
        row = {"ts": ts, "who": who, "model": model, "action": action, "version": version,
               "before": _json(before) if before is not None else None,
               "after": _json(after) if after is not None else None}
        tx.execute(
            "INSERT INTO audit_log (ts, who, model, action, version, before, after, prev_hash, row_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ts, who, model, action, version, row["before"], row["after"], prev, _row_hash(prev, row)),
        )

    def _seal_unchained(self) -> None:
        """Chain the audit rows written before the log was chained (once, after the upgrade), oldest first.

        They are sealed as found: the chain vouches for them from now on, not for their past.
        """
        if not self.db.query("SELECT 1 FROM audit_log WHERE row_hash IS NULL LIMIT 1"):
            return
        with self.db.transaction() as tx:
            last: dict[str, str] = {}
            for row in tx.query("SELECT * FROM audit_log ORDER BY id"):
                prev = last.get(row["model"], GENESIS)
                if row["row_hash"] is None:
                    tx.execute("UPDATE audit_log SET prev_hash = ?, row_hash = ? WHERE id = ?",
                               (prev, _row_hash(prev, row), row["id"]))
                    last[row["model"]] = _row_hash(prev, row)
                else:
                    last[row["model"]] = row["row_hash"]

    def verify_audit(self, name: str) -> dict[str, Any]:
        """Walk ``name``'s audit chain: ``{"model", "rows", "intact", "first_broken", "reason"}``.

        A row is broken when its content no longer hashes to its ``row_hash`` (edited), or its ``prev_hash``
        is not its predecessor's hash (a row deleted or inserted before it).
        """
        validate_name("model name", name)
        self._require_model(name)
        prev = GENESIS
        rows = self.db.query("SELECT * FROM audit_log WHERE model = ? ORDER BY id", (name,))
        for row in rows:
            if row["prev_hash"] != prev:
                return {"model": name, "rows": len(rows), "intact": False, "first_broken": row["id"],
                        "reason": "its predecessor is not the row it was written after (a row was deleted or inserted)"}
            if _row_hash(prev, row) != row["row_hash"]:
                return {"model": name, "rows": len(rows), "intact": False, "first_broken": row["id"],
                        "reason": "its content does not match its hash (the row was changed)"}
            prev = row["row_hash"]
        return {"model": name, "rows": len(rows), "intact": True, "first_broken": None, "reason": ""}

    def _discard_staging(self, staged: StagedUpload) -> None:
        # Best effort: a leftover staging prefix wastes space but is never visible as a version.
        try:
            self.store.delete_dir(staged.key)
        except OSError:
            pass
