"""One error tree for the whole platform. Each member carries the HTTP status it maps to.

The CLI prints the message and exits non-zero; the HTTP layer turns an error into
``{"error": message}`` with ``status_code``; across a Ray actor boundary the client
re-raises the original error (see ``registry.client``), so callers catch these types
whether the registry runs in-process or in an actor.
"""

from __future__ import annotations

__all__ = [
    "AiInfraError",
    "ArtifactCorrupted",
    "AtCapacity",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
]


class AiInfraError(Exception):
    """Base of every error aiinfra raises on purpose."""

    status_code: int = 500
    code: str = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        # A single positional argument keeps the error picklable, which Ray needs to carry it
        # from an actor back to the caller.
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, object]:
        return {"error": self.message, "code": self.code}


class InvalidInput(AiInfraError):
    """The caller sent something malformed: a bad name, a bad reference, a bad field."""

    status_code = 422
    code = "INVALID_INPUT"


class NotFound(AiInfraError):
    """A model, version, alias, dataset or run that does not exist."""

    status_code = 404
    code = "NOT_FOUND"


class Conflict(AiInfraError):
    """The request is well formed but clashes with the current state (e.g. an archived version)."""

    status_code = 409
    code = "CONFLICT"


class PayloadTooLarge(AiInfraError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"


class Unauthorized(AiInfraError):
    status_code = 401
    code = "UNAUTHORIZED"


class Forbidden(AiInfraError):
    status_code = 403
    code = "FORBIDDEN"


class ServiceUnavailable(AiInfraError):
    """A platform service is down or overloaded; the caller may retry."""

    status_code = 503
    code = "UNAVAILABLE"


class AtCapacity(ServiceUnavailable):
    """Back-pressure: the service is busy, not broken (a canary's arm does not count it as an error)."""


class ArtifactCorrupted(AiInfraError):
    """A stored file does not match the SHA-256 recorded when it was written.

    A server-side fault, not the client's: 500. The message names the file.
    """

    status_code = 500
    code = "ARTIFACT_CORRUPTED"
