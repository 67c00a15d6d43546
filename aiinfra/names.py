"""Names that become path segments and database keys: models, aliases, datasets, features, apps."""

from __future__ import annotations

import re

from aiinfra.errors import InvalidInput

__all__ = ["MAX_NAME_LENGTH", "validate_name"]

MAX_NAME_LENGTH = 128
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_name(kind: str, value: object) -> str:
    """Check a model name or an alias before anything touches storage.

    Names become path segments in the artifact store and keys in the metadata DB, so
    anything that could traverse a path or confuse a terminal is refused with a reason.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{kind} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(f"{kind} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{kind} {value[:20]!r}... is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{kind} {value!r} contains control characters")
    if "/" in value or "\\" in value:
        raise InvalidInput(f"{kind} {value!r} must not contain path separators")
    if ".." in value:
        raise InvalidInput(f"{kind} {value!r} must not contain '..'")
    if not _NAME_RE.match(value):
        raise InvalidInput(
            f"{kind} {value!r} is invalid: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return value
