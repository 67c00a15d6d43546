"""The validation spec: what a dataset must look like to enter the platform.

A YAML file validated by pydantic (``extra="forbid"``: a misspelt key is an error, not a
silently ignored rule)::

    columns:
      customer_id: {type: int64}
      plan:        {type: string, allowed: [basic, standard, premium]}
      email:       {type: string, nullable: true, regex: '[^@]+@[^@]+'}
      tenure_months: {type: float64, min: 0, max: 600}
      event_ts:    {type: timestamp}
    key: [customer_id]          # unique across the dataset
    min_rows: 1
    max_bad_fraction: 0.05      # past this share of quarantined rows the ingest fails
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiinfra.config import read_yaml, validate_as

__all__ = ["ColumnSpec", "ValidationSpec", "load_spec"]

ColumnType = Literal["int64", "float64", "string", "bool", "timestamp"]

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us"),
}


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ColumnType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float | bool] | None = None
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"regex {value!r} does not compile: {e}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.type not in ("int64", "float64"):
            raise ValueError(f"min/max apply to numeric columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.regex is not None and self.type != "string":
            raise ValueError("regex applies to string columns")
        return self

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.type]


class ValidationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, ColumnSpec] = Field(default_factory=dict)
    key: list[str] = Field(default_factory=list)
    min_rows: int = Field(default=1, ge=0)
    max_rows: int | None = Field(default=None, ge=0)
    max_bad_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    allow_extra_columns: bool = True

    @model_validator(mode="after")
    def _key_columns_declared(self) -> ValidationSpec:
        unknown = [k for k in self.key if self.columns and k not in self.columns]
        if unknown:
            raise ValueError(f"key column(s) {unknown} are not declared under columns")
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError(f"max_rows {self.max_rows} is less than min_rows {self.min_rows}")
        return self

    @property
    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> ValidationSpec:
    """Read a spec YAML; every invalid field is named in one error."""
    return validate_as(ValidationSpec, read_yaml(path, "spec file"), f"spec {path}")
