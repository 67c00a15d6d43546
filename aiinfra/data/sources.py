"""Where a dataset comes from: a file or a directory of files, local or on s3:// or gs://, opened with pyarrow.fs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from aiinfra.errors import InvalidInput
from aiinfra.redaction import redact_text, redact_uri

__all__ = ["FORMATS", "Source", "resolve_source"]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".ndjson": "json", ".json": "json"}


@dataclass(frozen=True)
class Source:
    uri: str
    filesystem: pafs.FileSystem
    paths: list[str]
    format: str


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext) or lower.endswith(ext + ".gz"):
            return fmt
    return None


def resolve_source(uri: str) -> Source:
    """Resolve ``uri`` to its files and their one format.

    Raises:
        InvalidInput: nothing there, no data files, mixed or unknown formats; the message names the path.
    """
    shown = redact_uri(uri)  # what messages name: the URI without its credentials
    try:
        fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), _abs(uri))
    except (ValueError, OSError) as e:
        raise InvalidInput(f"cannot open {shown!r}: {redact_text(str(e), [uri])}") from None
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InvalidInput(f"{shown}: no such file or directory")
    if info.type == pafs.FileType.File:
        fmt = _format_of(path)
        if fmt is None:
            raise InvalidInput(f"{shown}: unknown format; use one of {', '.join(sorted(set(FORMATS)))}")
        return Source(uri, fs, [path], fmt)
    files = [
        f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if f.type == pafs.FileType.File and not f.base_name.startswith((".", "_"))
    ]
    formats = {p: _format_of(p) for p in sorted(files)}
    known = {p: f for p, f in formats.items() if f}
    if not known:
        raise InvalidInput(f"{shown}: no CSV, Parquet or JSON lines files in this directory")
    kinds = set(known.values())
    if len(kinds) > 1:
        raise InvalidInput(f"{shown}: mixes formats ({', '.join(sorted(kinds))}); ingest one format at a time")
    return Source(uri, fs, sorted(known), kinds.pop())


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
