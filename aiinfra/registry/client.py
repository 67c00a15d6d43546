"""The registry client: what ``aiinfra.connect().registry`` returns.

Files move between the caller and the artifact store directly; only metadata goes to the
registry. The registry is reached through a ``ServiceBackend`` (``aiinfra.service``): the Ray actor (with retries
across actor restarts), or the plain class in-process (the CLI on a machine with no cluster
running, and tests).
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from aiinfra.config import PlatformConfig
from aiinfra.errors import Forbidden
from aiinfra.identity.callers import Caller, this_process
from aiinfra.registry.actor import REGISTRY
from aiinfra.registry.approvals import AliasRequest, ModelPolicy
from aiinfra.registry.files import fetch_version_files, stage_model_dir
from aiinfra.registry.runs import Run
from aiinfra.registry.types import (
    AuditEntry,
    Lineage,
    ModelSummary,
    ModelVersion,
    Signature,
    coerce_lineage,
    coerce_metrics,
    coerce_signature,
    parse_ref,
    validate_name,
)
from aiinfra.service import ActorBackend, LocalBackend, ServiceBackend, actor_backend
from aiinfra.storage import ArtifactStore, open_artifact_store

__all__ = ["ActorBackend", "LocalBackend", "RegistryClient", "default_principal"]


def default_principal() -> str:
    """Who the audit log names for calls from this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class RegistryClient:
    """Register, look up, alias, archive and audit model versions."""

    def __init__(self, backend: ServiceBackend, store: ArtifactStore, *, token: str | None = None,
                 service: str | None = None) -> None:
        """
        Args:
            token: an API token sent with every change; the registry checks it and its audit log names the
                token (``token:<id>``). Approving a protected alias takes one of the approver role.
            service: the platform service this client calls for (``autopilot``), named in place of the user.
        """
        self._backend = backend
        self.store = store
        self._token = token
        self._service = service

    def with_token(self, token: str | None) -> RegistryClient:
        """This client, sending ``token`` with its changes (an approver's, say)."""
        return RegistryClient(self._backend, self.store, token=token, service=self._service)

    def _caller(self) -> Caller:
        # Made per call: the Ray job this process belongs to is known only once it has joined the cluster.
        return this_process(token=self._token, service=self._service)

    @classmethod
    def on_cluster(cls, config: PlatformConfig, *, create: bool = False, store: ArtifactStore | None = None,
                   service: str | None = None) -> RegistryClient:
        """The client of the ``registry`` actor (started on first use when ``create``)."""
        return cls(actor_backend(REGISTRY, config, create=create),
                   store if store is not None else open_artifact_store(config.storage_root), service=service)

    def register(
        self,
        name: str,
        model_dir: str | os.PathLike[str],
        *,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        signature: Signature | dict[str, Any] | None = None,
        lineage: Lineage | dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ModelVersion:
        """Copy ``model_dir``'s files into the store and record them as the next version.

        With ``idempotency_key``, calling again (after a timeout, a crash, a lost reply)
        returns the version the first call made. Without one, the client makes a key for
        this call, so its own retries never create a duplicate either.
        """
        # Everything checkable is checked before a byte is uploaded.
        validate_name("model name", name)
        coerce_metrics(metrics)
        signature = coerce_signature(signature)
        lineage = coerce_lineage(lineage)
        if idempotency_key is not None:
            existing = self._backend.call("find_by_idempotency_key", name, idempotency_key)
            if existing is not None:
                return existing
        staged = stage_model_dir(self.store, model_dir)
        return self._backend.call(
            "commit_version",
            name,
            staged,
            metrics=metrics,
            params=params,
            signature=signature,
            lineage=lineage,
            idempotency_key=idempotency_key or f"auto-{uuid.uuid4().hex}",
            caller=self._caller(),
        )

    def get(self, ref: str) -> ModelVersion:
        parse_ref(ref)
        return self._backend.call("get", ref)

    def list_models(self) -> list[ModelSummary]:
        return self._backend.call("list_models")

    def list_versions(self, name: str, *, include_archived: bool = True) -> list[ModelVersion]:
        return self._backend.call("list_versions", name, include_archived=include_archived)

    def set_alias(self, name: str, version: int, alias: str, *, share: float | None = None) -> ModelVersion:
        """Point ``alias`` at ``version``; ``share``: the traffic its holder gets (a canary's), read by the router."""
        return self._backend.call("set_alias", name, version, alias, share=share, caller=self._caller())

    def alias_or_request(self, name: str, version: int, alias: str, *, reason: str = "") -> AliasRequest | ModelVersion:
        """Point ``alias`` at ``version``, or, where the alias is protected, request that (the pending request):
        what a pipeline that sets aliases by itself does, so a protected alias waits for its approvers."""
        try:
            return self.set_alias(name, version, alias)
        except Forbidden:
            return self.request_alias(name, version, alias, reason=reason)

    # -- protected aliases (approvals.py) ------------------------------------------------------------------
    def set_policy(self, name: str, policy: ModelPolicy | dict[str, Any]) -> ModelPolicy:
        return self._backend.call("set_policy", name, policy, caller=self._caller())

    def get_policy(self, name: str) -> ModelPolicy:
        return self._backend.call("get_policy", name)

    def request_alias(self, name: str, version: int, alias: str, *, reason: str = "") -> AliasRequest:
        return self._backend.call("request_alias", name, version, alias, caller=self._caller(), reason=reason)

    def approve(self, request_id: str) -> AliasRequest:
        return self._backend.call("approve", request_id, caller=self._caller())

    def refuse(self, request_id: str, *, reason: str = "") -> AliasRequest:
        return self._backend.call("refuse", request_id, caller=self._caller(), reason=reason)

    def list_requests(self, name: str, *, pending_only: bool = False) -> list[AliasRequest]:
        return self._backend.call("list_requests", name, pending_only=pending_only)

    def get_request(self, request_id: str) -> AliasRequest:
        return self._backend.call("get_request", request_id)

    def remove_alias(self, name: str, alias: str) -> None:
        self._backend.call("remove_alias", name, alias, caller=self._caller())

    def archive(self, name: str, version: int, *, reason: str = "") -> ModelVersion:
        return self._backend.call("archive", name, version, caller=self._caller(), reason=reason)

    def audit(self, name: str) -> list[AuditEntry]:
        return self._backend.call("audit", name)

    def verify_audit(self, name: str) -> dict[str, Any]:
        """Walk the model's hash-chained audit log: intact, or the first broken row and why."""
        return self._backend.call("verify_audit", name)

    # -- experiment runs ------------------------------------------------------------------
    def start_run(self, *, experiment: str, **kwargs: Any) -> Run:
        """Idempotent by ``run_id``: a retried start returns the stored run."""
        return self._backend.call("start_run", experiment=experiment, caller=self._caller(), **kwargs)

    def log_epochs(self, run_id: str, epochs: list[dict[str, Any]]) -> int:
        return self._backend.call("log_epochs", run_id, [dict(e) for e in epochs])

    def finish_run(self, run_id: str, *, status: str, **kwargs: Any) -> Run:
        return self._backend.call("finish_run", run_id, status=status, **kwargs)

    def get_run(self, run_id: str) -> Run:
        return self._backend.call("get_run", run_id)

    def list_runs(self, **filters: Any) -> list[Run]:
        return self._backend.call("list_runs", **filters)

    def compare_runs(self, a: str, b: str) -> dict[str, Any]:
        return self._backend.call("compare_runs", a, b)

    def download(self, ref: str | ModelVersion, dest: str | os.PathLike[str]) -> Path:
        """Fetch a version's files into ``dest``, refusing any file whose SHA-256 does not match."""
        version = ref if isinstance(ref, ModelVersion) else self.get(ref)
        return fetch_version_files(self.store, version, dest)
