"""The API tokens' roles and what each may do (no imports: the CLI's parser lists them without loading the stores).

``admin`` may do everything; ``predict`` may call inference routes; ``feedback`` and ``labeller``
may post labels (a ``labeller`` is the role meant to label requests that other tokens made);
``approver`` has no HTTP permission: it is the role that approvals of alias moves are to be asked of.
"""

from __future__ import annotations

__all__ = ["PERMISSIONS", "ROLES"]

ROLES = ("admin", "predict", "feedback", "labeller", "approver")
# What each route family needs; admin is allowed everywhere. A predict token may not label: labels
# steer the autopilot (drift, retrain rows, the canary's verdict), so they take a role of their own.
PERMISSIONS = {"predict": {"admin", "predict"}, "feedback": {"admin", "feedback", "labeller"}, "admin": {"admin"}}
