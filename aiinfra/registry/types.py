"""The registry's vocabulary: model references, versions, signatures, lineage, audit entries."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiinfra.config import format_validation_error
from aiinfra.errors import InvalidInput
from aiinfra.names import MAX_NAME_LENGTH, validate_name
from aiinfra.storage import FileDigest

__all__ = [
    "AuditEntry",
    "FieldSpec",
    "Lineage",
    "ModelRef",
    "ModelSummary",
    "ModelVersion",
    "Signature",
    "parse_ref",
    "validate_name",
]

LATEST = "latest"

DType = Literal["float32", "float64", "int32", "int64", "bool", "string", "timestamp"]


def validate_alias(alias: object) -> str:
    alias = validate_name("alias", alias)
    if alias.isdigit():
        raise InvalidInput(f"alias {alias!r} is all digits and would read as a version number")
    if alias == LATEST:
        raise InvalidInput(f"alias {LATEST!r} is reserved: it always means the newest active version")
    return alias


class ModelRef(BaseModel):
    """``name@3`` (a version), ``name@champion`` (an alias) or ``name`` (the newest active version)."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias or LATEST}"


def parse_ref(ref: str | ModelRef) -> ModelRef:
    if isinstance(ref, ModelRef):
        return ref
    if not isinstance(ref, str):
        raise InvalidInput(f"model reference must be a string like 'name@3' or 'name@champion', got {ref!r}")
    name, sep, selector = ref.partition("@")
    validate_name("model name", name)
    if not sep or selector == LATEST:
        return ModelRef(name=name, alias=None)
    if not selector:
        raise InvalidInput(f"model reference {ref!r} has nothing after '@': use name@VERSION or name@ALIAS")
    if selector.isdigit():
        version = int(selector)
        if version < 1:
            raise InvalidInput(f"model reference {ref!r}: versions start at 1")
        return ModelRef(name=name, version=version)
    validate_name("alias", selector)
    return ModelRef(name=name, alias=selector)


class FieldSpec(BaseModel):
    """One named input or output: its dtype and per-row shape ([] for a scalar, -1 for a free dimension)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    dtype: DType
    shape: list[int] = Field(default_factory=list)
    nullable: bool = False
    categories: list[str] | None = None
    description: str | None = None


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[FieldSpec]
    outputs: list[FieldSpec] = Field(default_factory=list)


class Lineage(BaseModel):
    """Where a version came from. Known keys are typed; later stages may add more."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dataset_version: str | None = None
    run_id: str | None = None
    code_version: str | None = None
    parent_version: int | None = None
    # The feature view the model's inputs came from: serving looks entity ids up in it.
    feature_view: str | None = None
    # aiinfra.provenance.environment() where it was trained; None for versions registered before it was.
    environment: dict[str, Any] | None = None


class ModelVersion(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    status: Literal["active", "archived"]
    created_at: float
    created_by: str
    artifact_uri: str
    files: dict[str, FileDigest]
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    signature: Signature | None = None
    lineage: Lineage = Field(default_factory=Lineage)
    aliases: list[str] = Field(default_factory=list)
    # The traffic share an alias gives its holder, where one was set with the alias (the autopilot's canary
    # share on ``challenger``): the router reads it beside the alias itself, so one channel carries both.
    alias_shares: dict[str, float] = Field(default_factory=dict)
    idempotency_key: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def artifact_key(self) -> str:
        return f"models/{self.name}/{self.version}"


class ModelSummary(BaseModel):
    name: str
    created_at: float
    latest_version: int | None
    version_count: int
    aliases: dict[str, int]


class AuditEntry(BaseModel):
    id: int
    ts: float
    who: str
    model: str
    action: str
    version: int | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


def coerce_signature(signature: Signature | dict[str, Any] | None) -> Signature | None:
    if signature is None or isinstance(signature, Signature):
        return signature
    try:
        return Signature.model_validate(signature)
    except ValidationError as e:
        raise InvalidInput(format_validation_error("signature", e)) from None


def coerce_lineage(lineage: Lineage | dict[str, Any] | None) -> Lineage:
    if lineage is None:
        return Lineage()
    if isinstance(lineage, Lineage):
        return lineage
    try:
        return Lineage.model_validate(lineage)
    except ValidationError as e:
        raise InvalidInput(format_validation_error("lineage", e)) from None


def coerce_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"metric names must be non-empty strings, got {key!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"metric {key!r} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InvalidInput(f"metric {key!r} must be finite, got {value!r}")
        out[key] = number
    return out
