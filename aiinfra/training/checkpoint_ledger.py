"""A run's checkpoints trusted only as written: each one's SHA-256 goes to the registry before it is reported.

Ray Train keeps checkpoints in the platform's storage (``<storage root>/checkpoints/<run>/...``), which
more principals may write than the platform. A worker that restarts after a failure, the driver that takes
the run's result, and a search that takes its best trial all load weights from there. So rank 0 records the
digest of every checkpoint it writes with the registry actor (its metadata DB), and a checkpoint is loaded
only if its digest is one its run recorded (``ArtifactCorrupted`` otherwise). The checkpoint is safetensors
and JSON, never a pickle, so a changed one could never run code; this check keeps it from changing weights.

The digest covers every file's name and content (``checkpoint_digest``), so a file added, removed or
changed is found. What a worker needs to reach the registry (``CheckpointRecords``) holds no secret: Ray
Train exports a loop's config to its dashboard state.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from aiinfra.errors import ArtifactCorrupted
from aiinfra.storage import sha256_file

__all__ = ["CheckpointLedger", "CheckpointRecords", "checkpoint_digest"]

class CheckpointRecords(BaseModel):
    """Where a run's checkpoint digests are recorded: the registry actor of ``namespace``, under ``run``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str
    run: str


def checkpoint_digest(directory: str | Path) -> str:
    """SHA-256 over every file of a checkpoint directory: its relative name and its content's SHA-256."""
    root = Path(directory)
    h = hashlib.sha256()
    # Dot-files are Ray's own bookkeeping (its checkpoint metadata), which no loader reads.
    for path in sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts)):
        h.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


class CheckpointLedger:
    """Records and checks one run's checkpoints through ``call(method, *args)`` (the registry's)."""

    def __init__(self, call: Callable[..., Any], run: str) -> None:
        self._call = call
        self.run = run

    @classmethod
    def of(cls, records: CheckpointRecords | None) -> CheckpointLedger | None:
        """The ledger ``records`` names, through the registry actor; None when the run records none."""
        if records is None:
            return None
        from aiinfra.registry.actor import REGISTRY_ACTOR
        from aiinfra.service import named_actor_backend

        backend = named_actor_backend(REGISTRY_ACTOR, records.namespace)
        return cls(backend.call, records.run)

    def record(self, directory: str | Path) -> str:
        """Record the checkpoint in ``directory`` (before it is reported: then it is never seen unrecorded)."""
        digest = checkpoint_digest(directory)
        self._call("record_checkpoint", self.run, digest)
        return digest

    @contextmanager
    def verified(self, directory: str | Path, *, where: str) -> Iterator[Path]:
        """A private copy of the checkpoint in ``directory``, checked: what is loaded is what was checked (on local
        storage ``directory`` is the stored checkpoint itself, which could change between a check and a load)."""
        with tempfile.TemporaryDirectory(prefix="aiinfra-ckpt-") as tmp:
            copy = Path(shutil.copytree(directory, Path(tmp) / "checkpoint"))
            self.verify(copy, where=where)
            yield copy

    def verify(self, directory: str | Path, *, where: str) -> None:
        """Raises ArtifactCorrupted unless ``directory`` holds a checkpoint this run recorded."""
        digest = checkpoint_digest(directory)
        if not self._call("checkpoint_recorded", self.run, digest):
            raise ArtifactCorrupted(
                f"checkpoint {where} of run {self.run} is not one the run wrote (sha256 {digest} is not recorded "
                "in the metadata DB): it changed in storage, or was put there; refusing to load it")
