"""The API tokens' roles and what each may do (no imports: the CLI's parser lists them without loading the stores).

``admin`` may do everything; ``predict`` may call inference routes and not label; ``feedback`` may call
inference routes and label the requests it made itself (an application that predicts and later reports
the outcome); ``labeller`` may label any request (a labelling service) but not predict; ``approver`` has no
HTTP permission: it approves (or refuses) requests to move a protected alias (``aiinfra models approve``).
"""

from __future__ import annotations

__all__ = ["LABEL_ANY", "PERMISSIONS", "ROLES"]

ROLES = ("admin", "predict", "feedback", "labeller", "approver")
# What each route family needs; admin is allowed everywhere. A predict token may not label: labels
# steer the autopilot (drift, retrain rows, the canary's verdict), so they take a role of their own.
PERMISSIONS = {"predict": {"admin", "predict", "feedback"}, "feedback": {"admin", "feedback", "labeller"},
               "admin": {"admin"}, "approve": {"admin", "approver"}}
# The roles whose labels are accepted for any request; any other token's, only for requests it made.
LABEL_ANY = frozenset({"admin", "labeller"})
