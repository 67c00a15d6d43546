"""Moving a model's files between a local directory and the artifact store.

These run in the caller's process (a training job, a Serve replica, the CLI), never inside
the registry actor: file bytes go straight to and from shared storage, and only small
metadata crosses the actor boundary.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiinfra.errors import InvalidInput
from aiinfra.registry.types import ModelVersion
from aiinfra.storage import ArtifactStore, FileDigest

__all__ = ["StagedUpload", "fetch_version_files", "stage_model_dir"]


@dataclass(frozen=True)
class StagedUpload:
    """Files uploaded under ``staging/<id>/``, waiting for the registry to give them a version."""

    key: str
    files: dict[str, FileDigest] = field(default_factory=dict)


def stage_model_dir(store: ArtifactStore, model_dir: str | os.PathLike[str]) -> StagedUpload:
    """Upload every file under ``model_dir`` to a fresh staging prefix, hashing as it goes.

    Raises:
        InvalidInput: ``model_dir`` is not a directory, is empty, or holds a symlink
            (a link could point anywhere; we copy files, not references).
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise InvalidInput(f"model_dir {str(root)!r} is not a directory")
    paths: list[Path] = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise InvalidInput(f"model_dir holds a symlink, {path}; copy the file in instead")
        if path.is_file():
            paths.append(path)
    if not paths:
        raise InvalidInput(f"model_dir {str(root)!r} holds no files")
    key = f"staging/{uuid.uuid4().hex}"
    files = {}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        files[rel] = store.write_file(f"{key}/{rel}", path)
    return StagedUpload(key=key, files=files)


def fetch_version_files(store: ArtifactStore, version: ModelVersion, dest: str | os.PathLike[str]) -> Path:
    """Download a version's files into ``dest``, refusing any whose SHA-256 does not match."""
    return store.fetch_verified(version.artifact_key, version.files, dest)
