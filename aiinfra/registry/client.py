"""The registry client: what ``aiinfra.connect().registry`` returns.

Files move between the caller and the artifact store directly; only metadata goes to the
registry. The registry is reached through a ``RegistryBackend``: the Ray actor (with retries
across actor restarts), or the plain class in-process (the CLI on a machine with no cluster
running, and tests).
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aiinfra.errors import AiInfraError, ServiceUnavailable
from aiinfra.registry.core import ModelRegistry
from aiinfra.registry.files import fetch_version_files, stage_model_dir
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
from aiinfra.storage import ArtifactStore

__all__ = ["ActorBackend", "LocalBackend", "RegistryBackend", "RegistryClient", "default_principal"]


class RegistryBackend(Protocol):
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


class LocalBackend:
    """Calls the registry class in this process."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.registry, method)(*args, **kwargs)


class ActorBackend:
    """All Ray calls to the registry actor go through here.

    A call that fails because the actor died (or is restarting) is retried until
    ``timeout_s`` passes; mutating calls are idempotent (``commit_version`` by its key,
    ``set_alias`` by its target), so a retry of a call that did run is harmless.
    Errors the registry raised on purpose come back as themselves, not wrapped.
    """

    def __init__(self, get_handle: Callable[[], Any], timeout_s: float = 60.0) -> None:
        self._get_handle = get_handle
        self._handle = get_handle()
        self.timeout_s = timeout_s

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        deadline = time.monotonic() + self.timeout_s
        delay = 0.05
        while True:
            try:
                return ray.get(getattr(self._handle, method).remote(*args, **kwargs), timeout=self.timeout_s)
            except RayTaskError as e:
                if isinstance(e.cause, AiInfraError):
                    raise e.cause from None
                raise
            except (RayActorError, ray.exceptions.GetTimeoutError) as e:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailable(
                        f"the registry actor did not answer {method} within {self.timeout_s:.0f}s ({type(e).__name__}); "
                        "check `ray status` and the actor's logs in the Ray dashboard"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                try:
                    self._handle = self._get_handle()
                except Exception:  # noqa: BLE001 - not found while restarting: keep the old handle, retry
                    pass


def default_principal() -> str:
    """Who the audit log names for calls from this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class RegistryClient:
    """Register, look up, alias, archive and audit model versions."""

    def __init__(self, backend: RegistryBackend, store: ArtifactStore, *, who: str | None = None) -> None:
        self._backend = backend
        self.store = store
        self.who = who or default_principal()

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
            who=self.who,
        )

    def get(self, ref: str) -> ModelVersion:
        parse_ref(ref)
        return self._backend.call("get", ref)

    def list_models(self) -> list[ModelSummary]:
        return self._backend.call("list_models")

    def list_versions(self, name: str, *, include_archived: bool = True) -> list[ModelVersion]:
        return self._backend.call("list_versions", name, include_archived=include_archived)

    def set_alias(self, name: str, version: int, alias: str) -> ModelVersion:
        return self._backend.call("set_alias", name, version, alias, who=self.who)

    def remove_alias(self, name: str, alias: str) -> None:
        self._backend.call("remove_alias", name, alias, who=self.who)

    def archive(self, name: str, version: int, *, reason: str = "") -> ModelVersion:
        return self._backend.call("archive", name, version, who=self.who, reason=reason)

    def audit(self, name: str) -> list[AuditEntry]:
        return self._backend.call("audit", name)

    def download(self, ref: str | ModelVersion, dest: str | os.PathLike[str]) -> Path:
        """Fetch a version's files into ``dest``, refusing any file whose SHA-256 does not match."""
        version = ref if isinstance(ref, ModelVersion) else self.get(ref)
        return fetch_version_files(self.store, version, dest)
