"""Feature views: which features of which entity, from which dataset, valid for how long."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aiinfra.config import format_validation_error, read_yaml
from aiinfra.errors import InvalidInput
from aiinfra.registry.types import validate_name

__all__ = ["FeatureView", "load_feature_views", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from ``3600``, ``"90m"``, ``"30d"`` or ``"2w"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 3600, 90m, 12h, 30d, 2w)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class FeatureView(BaseModel):
    """``features`` of ``entity`` (a key column), as of ``timestamp``, from ``source`` (a dataset name).

    A value is valid for ``ttl`` after its event time; past that it reads as missing, offline
    and online alike. ``ttl: null`` means forever.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    entity: str = Field(min_length=1)
    timestamp: str = Field(min_length=1)
    features: list[str] = Field(min_length=1)
    ttl_s: float | None = Field(default=None, alias="ttl", gt=0)
    source: str

    @field_validator("name", "source")
    @classmethod
    def _names(cls, value: str) -> str:
        try:
            return validate_name("feature view or dataset name", value)
        except InvalidInput as e:
            raise ValueError(e.message) from None

    @field_validator("ttl_s", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("features")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("features must be distinct")
        return value


def load_feature_views(source: str | Path | list[dict[str, Any]]) -> list[FeatureView]:
    """Views from a YAML file (a list under ``feature_views``) or a list of mappings."""
    if isinstance(source, list):
        items, where = source, "feature views"
    else:
        where = f"feature views file {source}"
        items = read_yaml(source, "feature views file").get("feature_views", [])
    try:
        return [FeatureView.model_validate(item) for item in items]
    except ValidationError as e:
        raise InvalidInput(format_validation_error(where, e)) from None
