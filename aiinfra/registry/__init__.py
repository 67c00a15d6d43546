"""The model registry: models, versions 1..n, aliases, lineage and the audit log.

``core`` holds the logic (no Ray), ``actor`` the named actor around it, ``client`` what callers use.
"""

from aiinfra.registry.types import (
    AuditEntry,
    FieldSpec,
    Lineage,
    ModelRef,
    ModelSummary,
    ModelVersion,
    Signature,
    parse_ref,
)

__all__ = ["AuditEntry", "FieldSpec", "Lineage", "ModelRef", "ModelSummary", "ModelVersion", "Signature", "parse_ref"]
