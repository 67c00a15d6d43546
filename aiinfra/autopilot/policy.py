"""The autopilot's policy for one model: when to retrain, how to canary, when to promote or roll back.

One frozen pydantic model per section, read from YAML by ``load_policy``; every field has a
default except ``model`` and ``retrain.training_config``. An invalid file is one ``InvalidInput``
that names every bad field. No Ray here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiinfra.config import read_yaml, validate_as
from aiinfra.errors import InvalidInput
from aiinfra.registry.types import validate_name

__all__ = [
    "AutopilotPolicy",
    "CanaryMetric",
    "CanaryPolicy",
    "PromotionPolicy",
    "RetrainPolicy",
    "RollbackPolicy",
    "TriggerPolicy",
    "load_policy",
]

# What the canary can compare its arms on: the monitor counts requests, errors, labelled and correct
# requests per arm, so accuracy (correct / labelled) and error_rate (errors / requests) are all there is.
CanaryMetric = Literal["accuracy", "error_rate"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TriggerPolicy(_Section):
    """What starts a retrain: sustained feature drift, a measured drop in live performance, an estimated drop
    before labels arrive, or concept drift on the error stream."""

    drift_features_min: int = Field(1, ge=1, description="k: a window counts when >= k features drifted")
    consecutive_windows: int = Field(2, ge=1, description="w: retrain after w counting windows in a row")
    performance_metric: str = Field("accuracy", min_length=1)
    performance_drop: float | None = Field(0.05, ge=0, description="None disables the performance trigger")
    min_labelled: int = Field(100, ge=1, description="labelled predictions before the performance trigger applies")
    # Before labels: a window's estimated performance_metric (CBPE) whose whole 95% band lies more than this
    # below the version's registered value; only reliable estimates count. None disables it.
    estimated_drop: float | None = Field(None, ge=0, description="None disables the estimated-performance trigger")
    # Concept drift found on the error stream (ADWIN over per-row errors once labels arrive).
    concept_drift: bool = True


class RetrainPolicy(_Section):
    training_config: str = Field(min_length=1, description="the training pipeline's config (path)")
    recent_rows: int = Field(5000, ge=0, description="recent labelled production rows added to the training data")
    reference_rows: int | None = Field(
        None, ge=0, description="the newest rows of the training dataset kept beside them (None: all of it)"
    )
    # The gate judges on labels no client chose (aiinfra/pipelines/retrain.py): the newest rows labelled by a
    # labeller or admin token when there are this many, else the newest reference rows.
    min_trusted_holdout: int = Field(100, ge=1, description="trusted labelled rows needed to hold out production rows")
    max_untrusted_share: float = Field(
        0.3, ge=0, le=1, description="rows labelled by the client that made the request: at most this share of training"
    )


class CanaryPolicy(_Section):
    share: float = Field(0.1, gt=0, le=0.5, description="share of requests routed to the challenger")
    min_requests: int = Field(300, ge=1)
    min_labelled: int = Field(200, ge=1)
    max_duration_s: float = Field(3600.0, gt=0)


class PromotionPolicy(_Section):
    metric: CanaryMetric = Field(
        "accuracy", description="compared per arm: accuracy (correct / labelled) or error_rate (errors / requests)"
    )
    test: Literal["non_inferiority"] = "non_inferiority"
    margin: float = Field(0.01, ge=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=0.5)


class RollbackPolicy(_Section):
    max_error_rate: float = Field(0.02, ge=0, le=1, description="share of failed requests on the challenger")
    max_regression: float = Field(0.05, ge=0, le=1, description="challenger's accuracy below the champion's")
    min_labelled: int = Field(
        50, ge=1, description="labelled requests on each arm before the early regression check applies"
    )


class AutopilotPolicy(_Section):
    model: str
    trigger: TriggerPolicy = TriggerPolicy()
    cooldown_s: float = Field(3600.0, ge=0, description="after a cycle ends, no retrain for this long")
    max_retrains_per_day: int = Field(3, ge=0, description="retrains decided in any rolling 24 h; 0 disables")
    retrain: RetrainPolicy
    canary: CanaryPolicy = CanaryPolicy()
    promotion: PromotionPolicy = PromotionPolicy()
    rollback: RollbackPolicy = RollbackPolicy()

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        try:
            return validate_name("model", value)
        except InvalidInput as e:  # pydantic collects ValueErrors, so every bad field is reported together
            raise ValueError(str(e)) from None


def load_policy(source: str | os.PathLike[str] | Mapping[str, Any] | AutopilotPolicy) -> AutopilotPolicy:
    """An ``AutopilotPolicy`` from a YAML file, a mapping, or a policy (returned as is).

    A relative ``retrain.training_config`` in a file is resolved against the file's folder, as the
    training config resolves its own ``features`` file, so the policy means the same thing from any
    working directory.

    Raises:
        InvalidInput: the file is unreadable or not a mapping, or fields are invalid (all named at once).
    """
    if isinstance(source, AutopilotPolicy):
        return source
    if isinstance(source, Mapping):
        return validate_as(AutopilotPolicy, dict(source), "autopilot policy")
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidInput(f"an autopilot policy is a YAML path or a mapping, got {type(source).__name__}")
    path = Path(source)
    data = read_yaml(path, "autopilot policy")
    policy = validate_as(AutopilotPolicy, data, f"autopilot policy {path}")
    config = Path(policy.retrain.training_config).expanduser()
    if not config.is_absolute():
        config = (path.parent / config).resolve()
        retrain = policy.retrain.model_copy(update={"training_config": str(config)})
        policy = policy.model_copy(update={"retrain": retrain})
    return policy
