"""What a retrain job reports back to the autopilot: one typed record, at one key.

The job (``aiinfra retrain``, ``jobs/retrain.py``) writes it to the artifact store when it ends; the
autopilot reads it once the job has succeeded. Both build the key with ``retrain_result_key``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from aiinfra.storage import ArtifactStore

__all__ = ["RetrainResult", "read_retrain_result", "retrain_result_key", "write_retrain_result"]


class RetrainResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # a newer job may report more

    model: str | None  # NAME@VERSION registered, None when training registered nothing
    version: int | None
    challenger: str | None  # the registered version when the gate passed it, else None
    gate: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    run_id: str | None = None
    dataset_version: str | None = None
    production_rows: int = 0
    reference_rows: int = 0
    holdout: str | None = None  # what judged it: "trusted production rows" or "reference rows"
    holdout_dataset: str | None = None
    holdout_rows: int = 0
    trusted_rows: int = 0  # labelled by a labeller / admin token
    untrusted_rows: int = 0  # labelled by the client that made the request
    untrusted_left_out: int = 0  # past the policy's max_untrusted_share
    seconds: float = 0.0

    @property
    def judged_on(self) -> dict[str, Any]:
        """The gate's holdout and the rows trained on, for the autopilot's decision log."""
        return {"holdout": self.holdout, "holdout_dataset": self.holdout_dataset, "holdout_rows": self.holdout_rows,
                "trusted_rows": self.trusted_rows, "untrusted_rows": self.untrusted_rows,
                "untrusted_left_out": self.untrusted_left_out}

    @property
    def refusal(self) -> str:
        """Why there is no challenger, in words."""
        return f"gate refused {self.model}: {(self.gate or {}).get('reason')}"


def retrain_result_key(model: str, job_id: str) -> str:
    return f"autopilot/{model}/{job_id}.json"


def write_retrain_result(store: ArtifactStore, key: str, result: RetrainResult) -> None:
    store.write_bytes(key, result.model_dump_json().encode())


def read_retrain_result(store: ArtifactStore, key: str) -> RetrainResult | None:
    """The stored record, or None when the job wrote none."""
    if not store.exists(key):
        return None
    return RetrainResult.model_validate_json(store.read_bytes(key))
