"""What a retrain job reports back to the autopilot: one typed record, at one key.

The job (``aiinfra retrain``, ``jobs/retrain.py``) writes it to the artifact store when it ends; the
autopilot reads it once the job has succeeded. Both build the key with ``retrain_result_key``.

The record decides what the autopilot canaries, so it is trusted only as written: its SHA-256 goes to the
metadata DB with it, and a record whose bytes do not match (changed in the store, or written by anything but a
retrain job with the platform's metadata DB) is refused. Whoever may write the artifact store (a bucket's
writers are often more than the platform) cannot choose the next challenger.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from aiinfra.errors import InvalidInput
from aiinfra.storage import ArtifactStore, MetadataDB, Migration, sha256_bytes

__all__ = ["RetrainResult", "read_retrain_result", "retrain_result_key", "write_retrain_result"]

COMPONENT = "retrain_results"
MIGRATIONS = (
    Migration(1, ("""CREATE TABLE retrain_results (
        result_key TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",)),
)


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


def write_retrain_result(store: ArtifactStore, db: MetadataDB, key: str, result: RetrainResult) -> None:
    """The record at ``key`` in the store, and its SHA-256 in the metadata DB (the store first: a hash without
    its record is a job that wrote nothing; a record without its hash is refused)."""
    data = result.model_dump_json().encode()
    store.write_bytes(key, data)
    db.ensure_schema(COMPONENT, MIGRATIONS)
    with db.transaction() as tx:
        tx.execute("INSERT INTO retrain_results (result_key, sha256, created_at) VALUES (?, ?, ?) "
                   "ON CONFLICT (result_key) DO UPDATE SET sha256 = excluded.sha256, created_at = excluded.created_at",
                   (key, sha256_bytes(data), time.time()))


def read_retrain_result(store: ArtifactStore, db: MetadataDB, key: str) -> RetrainResult | None:
    """The stored record, or None when the job wrote none.

    Raises:
        InvalidInput: the record's bytes are not those whose hash the job put in the metadata DB (or it put none).
    """
    if not store.exists(key):
        return None
    data = store.read_bytes(key)
    db.ensure_schema(COMPONENT, MIGRATIONS)
    rows = db.query("SELECT sha256 FROM retrain_results WHERE result_key = ?", (key,))
    if not rows:
        raise InvalidInput(f"the retrain result at {key} has no SHA-256 in the metadata DB: it was not written by a "
                           "retrain job of this platform, and is not trusted")
    if rows[0]["sha256"] != sha256_bytes(data):
        raise InvalidInput(f"the retrain result at {key} does not match the SHA-256 its job recorded in the metadata DB "
                           "(changed in the artifact store since): not trusted")
    return RetrainResult.model_validate_json(data)
