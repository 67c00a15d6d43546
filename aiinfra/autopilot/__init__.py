"""The autopilot: drift and live performance -> retrain -> canary -> promote or roll back.

``policy`` holds the per-model ``AutopilotPolicy`` (read from YAML), ``core`` the state machine
that decides and records, persisted in the metadata DB; neither imports Ray. ``actor`` is the named
actor ``autopilot`` that wraps ``Autopilot`` and carries its decisions out (import it explicitly).
"""

from aiinfra.autopilot.core import ArmStats, Autopilot, Decision, non_inferiority_test
from aiinfra.autopilot.policy import (
    AutopilotPolicy,
    CanaryPolicy,
    PromotionPolicy,
    RetrainPolicy,
    RollbackPolicy,
    TriggerPolicy,
    load_policy,
)

__all__ = [
    "ArmStats",
    "Autopilot",
    "AutopilotPolicy",
    "CanaryPolicy",
    "Decision",
    "PromotionPolicy",
    "RetrainPolicy",
    "RollbackPolicy",
    "TriggerPolicy",
    "load_policy",
    "non_inferiority_test",
]
