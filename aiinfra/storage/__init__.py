"""Storage: the artifact store (files, over pyarrow.fs) and the metadata DB (rows, SQL).

Nothing in here imports anything above it (no registry, no Ray).
"""

from aiinfra.storage.artifacts import ArtifactStore, FileDigest, open_artifact_store
from aiinfra.storage.hashing import sha256_bytes, sha256_file
from aiinfra.storage.ledger import DigestLedger
from aiinfra.storage.metadata import MetadataDB, Migration, open_metadata_db

__all__ = [
    "ArtifactStore",
    "DigestLedger",
    "FileDigest",
    "MetadataDB",
    "Migration",
    "open_artifact_store",
    "open_metadata_db",
    "sha256_bytes",
    "sha256_file",
]
