"""The artifact store: immutable files under one storage root, opened through pyarrow.fs.

The root is a URI: a local directory (the embedded default), ``s3://bucket/prefix`` or
``gs://bucket/prefix`` (query parameters such as ``?endpoint_override=...&scheme=http`` are
passed on to pyarrow). Keys are relative POSIX paths such as ``models/churn/3/weights.safetensors``.

A write is acknowledged only once it is durable and whole:
- locally: temp file in the same directory, fsync, atomic rename, fsync of the directory;
- on object stores: upload to a temp key, then move, so a failed upload never leaves a
  partial object under the final key (an object store never shows a half-written object).
Every write returns the SHA-256 and size of what was written, computed while streaming.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from aiinfra.errors import ArtifactCorrupted, InvalidInput, NotFound
from aiinfra.redaction import redact_text, redact_uri
from aiinfra.storage.hashing import CHUNK_SIZE, HashingReader, iter_chunks

__all__ = ["ArtifactStore", "FileDigest", "open_artifact_store"]

_TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int

    def to_dict(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FileDigest:
        return cls(sha256=str(d["sha256"]), size=int(d["size"]))  # type: ignore[arg-type]


def _check_key(key: str) -> str:
    """Refuse keys that could escape the root or are not plain relative paths."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidInput(f"invalid artifact key {key!r}: must be a relative POSIX path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"invalid artifact key {key!r}: empty, '.' or '..' path segment")
    return key


class ArtifactStore:
    """Files under one root of a pyarrow filesystem. Subclassed only for local durability."""

    def __init__(self, fs: pafs.FileSystem, root: str, uri: str, *, open_uri: str | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri  # shown and stored: no query, no password
        self._open_uri = open_uri or uri  # the root as given (options, endpoint): for reopening, never shown

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # -- paths -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.root}/{_check_key(key)}" if self.root else _check_key(key)

    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{_check_key(key)}"

    def openable_uri_for(self, key: str) -> str:
        """The URI another reader opens ``key`` by: the root as given, options included (not for display)."""
        base, sep, query = self._open_uri.partition("?")
        return f"{base.rstrip('/')}/{_check_key(key)}{sep}{query}"

    # -- writes ------------------------------------------------------------------------
    def write_file(self, key: str, src: str | os.PathLike[str]) -> FileDigest:
        with open(src, "rb") as f:
            return self._atomic_write(key, iter_chunks(f))

    def write_bytes(self, key: str, data: bytes) -> FileDigest:
        return self._atomic_write(key, [data])

    def copy(self, src_key: str, dst_key: str) -> FileDigest:
        """Copy within the store, hashing what is written (a read-back check of the source)."""
        try:
            with self.fs.open_input_stream(self.path(src_key), compression=None) as f:
                return self._atomic_write(dst_key, iter_chunks(f))
        except FileNotFoundError:
            raise NotFound(f"artifact {self.uri_for(src_key)} does not exist") from None

    def move(self, src_key: str, dst_key: str) -> None:
        """Move a file within the store without reading it here: a rename on a local disk, a server-side copy
        (then a delete of the source) on S3 and GCS. The destination appears whole or not at all."""
        final = self.path(dst_key)
        parent = posixpath.dirname(final)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        try:
            self.fs.move(self.path(src_key), final)
        except FileNotFoundError:
            raise NotFound(f"artifact {self.uri_for(src_key)} does not exist") from None

    def _atomic_write(self, key: str, chunks: Iterable[bytes]) -> FileDigest:
        final = self.path(key)
        parent = posixpath.dirname(final)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        tmp = f"{final}{_TMP_MARK}{uuid.uuid4().hex}"
        reader = HashingReader(chunks)
        try:
            with self.fs.open_output_stream(tmp, compression=None) as out:
                for chunk in reader:
                    out.write(chunk)
            self.fs.move(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise
        return FileDigest(reader.hexdigest, reader.size)

    def _discard(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    # -- reads -------------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(key), compression=None) as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"artifact {self.uri_for(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type != pafs.FileType.NotFound

    def digest(self, key: str) -> FileDigest:
        try:
            with self.fs.open_input_stream(self.path(key), compression=None) as f:
                reader = HashingReader(iter_chunks(f))
                for _ in reader:
                    pass
        except FileNotFoundError:
            raise NotFound(f"artifact {self.uri_for(key)} does not exist") from None
        return FileDigest(reader.hexdigest, reader.size)

    def list_files(self, prefix: str) -> list[str]:
        """Relative paths of the files under ``prefix`` (temp files of unfinished writes excluded)."""
        base = self.path(prefix)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and _TMP_MARK not in info.base_name:
                out.append(posixpath.relpath(info.path, base))
        return sorted(out)

    def delete_dir(self, prefix: str) -> None:
        try:
            self.fs.delete_dir(self.path(prefix))
        except FileNotFoundError:
            pass

    def fetch_verified(self, prefix: str, files: Mapping[str, FileDigest], dest: str | os.PathLike[str]) -> Path:
        """Download ``files`` under ``prefix`` into ``dest``, checking each one's SHA-256.

        Raises:
            ArtifactCorrupted: a file is missing or its content does not match its recorded
                hash; the message names the file. Nothing mismatching is left in ``dest``.
            InvalidInput: a file's name is not a plain relative path (nothing is created then).
        """
        dest = Path(dest)
        # Every name is checked before anything is created: a recorded name like "../x" must not make a
        # directory outside ``dest`` (or anywhere) on its way to being refused.
        for rel in files:
            _check_key(rel)
            _check_key(f"{prefix}/{rel}")
        for rel, expected in sorted(files.items()):
            key = f"{prefix}/{rel}"
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}{_TMP_MARK}{uuid.uuid4().hex}")
            try:
                with self.fs.open_input_stream(self.path(key), compression=None) as src, open(tmp, "wb") as out:
                    reader = HashingReader(iter_chunks(src, CHUNK_SIZE))
                    for chunk in reader:
                        out.write(chunk)
            except FileNotFoundError:
                tmp.unlink(missing_ok=True)
                raise ArtifactCorrupted(f"artifact file {self.uri_for(key)} is missing") from None
            if reader.hexdigest != expected.sha256:
                tmp.unlink(missing_ok=True)
                raise ArtifactCorrupted(
                    f"artifact file {self.uri_for(key)} failed its integrity check: sha256 is "
                    f"{reader.hexdigest}, the registry recorded {expected.sha256}; refusing to load it"
                )
            os.replace(tmp, target)
        return dest


class LocalArtifactStore(ArtifactStore):
    """A local directory. Adds the fsyncs that make an acknowledged write survive a crash."""

    def __init__(self, root: str) -> None:
        super().__init__(pafs.LocalFileSystem(), str(Path(root).resolve()), str(Path(root).resolve()))

    def _atomic_write(self, key: str, chunks: Iterable[bytes]) -> FileDigest:
        final = Path(self.path(key))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}{_TMP_MARK}{uuid.uuid4().hex}")
        reader = HashingReader(chunks)
        try:
            with open(tmp, "wb") as out:
                for chunk in reader:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return FileDigest(reader.hexdigest, reader.size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_artifact_store(uri: str) -> ArtifactStore:
    """Open the store for a storage-root URI: a local path, ``file://``, ``s3://`` or ``gs://``."""
    if "://" not in uri:
        return LocalArtifactStore(uri)
    if uri.startswith("file://"):
        return LocalArtifactStore(uri[len("file://") :])
    scheme = uri.split("://", 1)[0]
    if scheme not in ("s3", "gs", "gcs"):
        raise InvalidInput(f"unsupported storage URI {redact_uri(uri)!r}: use a local path, s3://, gs:// or file://")
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:
        raise InvalidInput(f"cannot open storage root {redact_uri(uri)!r}: {redact_text(str(e), [uri])}") from None
    # The store's URI is what registry rows, run records and messages show: no query (pyarrow's
    # options, credentials among them) and no password.
    public_uri = redact_uri(uri.split("?", 1)[0])
    return ArtifactStore(fs, root, public_uri, open_uri=uri)
