"""Protected aliases: moving one needs approvals. The vocabulary (no storage here; ``core.ModelRegistry`` keeps them).

A model's policy is code, a YAML file kept in the registry (``aiinfra models policy NAME FILE``)::

    aliases:
      champion: {approvals: 2, expires: 24h}          # two approvers, within a day of the request
      challenger: {approvals: 1, self_approval: true}

A protected alias is not moved by ``set_alias``: a request names the version (``aiinfra models request``; the
autopilot makes one when its canary passes), approvers approve it (``aiinfra models approve ID``, with a
token of the ``approver`` or ``admin`` role), and the approval that reaches the policy's count moves the alias
in the same transaction. A request expires after the policy's time, is refused by any approver, and its
requester may not approve it unless the policy says ``self_approval: true``. Approvers are counted by identity
(the approving token): the same token approving twice counts once. With ``distinct_people: true`` they are
counted by person: each approving token must have been issued to someone (``aiinfra token create --for
NAME``), one person's two tokens count once, and the requester's person may not approve. The registry checks
the token itself (``aiinfra.identity.callers``). Every step is in the model's audit log.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AliasPolicy", "AliasRequest", "ModelPolicy", "parse_seconds"]

MAX_APPROVALS = 10


def parse_seconds(value: Any) -> float:
    """``3600``, ``"90m"``, ``"24h"``, ``"7d"``: a duration in seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '24h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        try:
            seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a duration: use seconds or a number with s, m, h or d") from None
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


class AliasPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    approvals: int = Field(ge=1, le=MAX_APPROVALS, description="approvals that move the alias")
    self_approval: bool = Field(False, description="the requester's own approval counts")
    distinct_people: bool = Field(False, description="approvals count by the person each token was issued to")
    expires: float = Field(86_400.0, description="seconds (or '24h') from the request to its expiry")

    @field_validator("expires", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_seconds(value)


class ModelPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    aliases: dict[str, AliasPolicy] = Field(default_factory=dict)


class Approval(BaseModel):
    who: str
    at: float
    person: str | None = None  # whom the approving token was issued to


class AliasRequest(BaseModel):
    """A request to point ``alias`` at ``version``, and where it stands."""

    id: str
    model: str
    alias: str
    version: int
    requested_by: str
    requested_by_person: str | None = None
    reason: str = ""
    created_at: float
    expires_at: float
    status: Literal["pending", "applied", "refused", "expired"]
    approvals: list[Approval] = Field(default_factory=list)
    needed: int
    decided_at: float | None = None
    decided_by: str | None = None
