"""The promotion gate: should a freshly trained candidate replace the current champion?

A candidate is promoted only when it beats the champion on one chosen metric by at least a margin, and does
not get markedly worse on any data slice large enough to trust. Averages hide regressions on a segment
(a region, a plan, a device), and the slice check is what catches those.

The gate is a pure function of two ``EvaluationReport`` objects, so a pipeline can run it anywhere and
store the verdict (with its one-sentence reason) next to the model version it judged. No Ray here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiinfra.errors import InvalidInput
from aiinfra.training.evaluation import EvaluationReport
from aiinfra.training.metrics import higher_is_better

__all__ = ["GateConfig", "GateVerdict", "promotion_gate"]

# Metric differences are float arithmetic: 0.811 - 0.801 is not exactly 0.010. A candidate that sits
# exactly on a threshold should pass, so comparisons allow this much rounding noise.
_FLOAT_SLACK = 1e-9


class GateConfig(BaseModel):
    """What the candidate must achieve against the champion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    # How much better (in the metric's own units, direction-aware) the candidate must be; a negative value
    # tolerates a small loss, e.g. to promote a cheaper model.
    min_improvement: float = 0.0
    # The largest tolerated worsening on any slice with enough rows; None disables the slice check.
    max_slice_regression: float | None = Field(default=0.05, ge=0.0)
    min_slice_rows: int = Field(default=30, ge=1)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        try:
            higher_is_better(value)
        except InvalidInput as e:
            raise ValueError(str(e)) from None
        return value


class GateVerdict(BaseModel):
    """The gate's decision and the numbers behind it."""

    model_config = ConfigDict(extra="forbid")

    passed: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None
    improvement: float | None  # positive = better, whatever the metric's direction
    # Each {"column", "value", "candidate", "champion", "regression"} past the tolerance, worst first.
    slice_regressions: list[dict[str, Any]]


def _num(x: float) -> str:
    # Three decimals suit most metrics; a tiny non-zero difference would print as 0.000, so show it in full.
    return f"{x:.3f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.2e}"


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "-") + _num(abs(x))


def _improvement(metric: str, candidate: float, champion: float) -> float:
    """How much better the candidate is; positive means better whichever way the metric points."""
    return candidate - champion if higher_is_better(metric) else champion - candidate


def _slice_regressions(
    candidate: EvaluationReport, champion: EvaluationReport, config: GateConfig, tolerance: float
) -> list[dict[str, Any]]:
    """Slices present in both reports with enough rows and the metric, worse by more than ``tolerance``."""
    metric = config.metric
    found: list[dict[str, Any]] = []
    for column, cand_groups in candidate.slices.items():
        champ_groups = champion.slices.get(column, {})
        for value, cand in cand_groups.items():
            champ = champ_groups.get(value)
            if champ is None or metric not in cand or metric not in champ:
                continue
            if min(cand.get("rows", 0.0), champ.get("rows", 0.0)) < config.min_slice_rows:
                continue
            regression = -_improvement(metric, cand[metric], champ[metric])
            if regression > tolerance + _FLOAT_SLACK:
                found.append({
                    "column": column,
                    "value": value,
                    "candidate": cand[metric],
                    "champion": champ[metric],
                    "regression": regression,
                })
    found.sort(key=lambda r: r["regression"], reverse=True)
    return found


def _slice_sentence(regressions: list[dict[str, Any]], tolerance: float | None) -> str:
    if tolerance is None:
        return "slice check disabled"
    if not regressions:
        return f"no slice regressed more than {_num(tolerance)}"
    worst = regressions[0]
    others = f" ({len(regressions)} slices in all)" if len(regressions) > 1 else ""
    return (
        f"slice {worst['column']}={worst['value']} regressed by {_num(worst['regression'])} "
        f"(> {_num(tolerance)}; {_num(worst['candidate'])} vs champion {_num(worst['champion'])}){others}"
    )


def promotion_gate(
    candidate: EvaluationReport, champion: EvaluationReport | None, config: GateConfig
) -> GateVerdict:
    """Judge ``candidate`` against ``champion`` under ``config``; see the module docstring for the rules."""
    metric = config.metric
    if metric not in candidate.metrics:
        available = ", ".join(sorted(candidate.metrics)) or "none"
        raise InvalidInput(f"metric {metric!r} is not in the candidate's report; available: {available}")
    cand_value = candidate.metrics[metric]

    def verdict(passed: bool, reason: str, **fields: Any) -> GateVerdict:
        base: dict[str, Any] = {"champion": None, "improvement": None, "slice_regressions": []}
        base.update(fields)
        return GateVerdict(passed=passed, reason=reason, metric=metric, candidate=cand_value, **base)

    if champion is None:
        return verdict(True, f"no champion yet; {metric} {_num(cand_value)} accepted as the first model")
    if metric not in champion.metrics:
        reason = f"champion has no {metric} to compare against; {metric} {_num(cand_value)} accepted"
        return verdict(True, reason)

    champ_value = champion.metrics[metric]
    improvement = _improvement(metric, cand_value, champ_value)
    improved = improvement >= config.min_improvement - _FLOAT_SLACK
    tolerance = config.max_slice_regression
    regressions = [] if tolerance is None else _slice_regressions(candidate, champion, config, tolerance)

    head = f"{metric} {_num(cand_value)} vs champion {_num(champ_value)}"
    if improved:
        metric_part = f"{head} ({_signed(improvement)} >= {_signed(config.min_improvement)})"
    else:
        short = config.min_improvement - improvement
        required = _signed(config.min_improvement)
        metric_part = f"{head} ({_signed(improvement)} < required {required}, short by {_num(short)})"
    reason = f"{metric_part}; {_slice_sentence(regressions, config.max_slice_regression)}"
    return verdict(
        improved and not regressions,
        reason,
        champion=champ_value,
        improvement=improvement,
        slice_regressions=regressions,
    )
