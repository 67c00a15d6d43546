"""A registered model with a reference profile, for the monitor's unit tests (the ``registered`` fixture in
conftest.py): two inputs, a calibrated model's P(class 1), labels drawn from it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aiinfra.monitoring.profile import build_profile, write_profile
from aiinfra.registry.client import RegistryClient
from aiinfra.registry.core import ModelRegistry
from aiinfra.registry.types import FieldSpec
from aiinfra.service import LocalBackend
from aiinfra.storage import open_artifact_store, open_metadata_db

INPUTS = [FieldSpec(name="x", dtype="float64"), FieldSpec(name="plan", dtype="string")]


def rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Inputs, a calibrated model's P(class 1) on them, and labels drawn from it."""
    frame = pd.DataFrame({"x": rng.normal(shift, 1.0, n), "plan": rng.choice(["basic", "premium"], n)})
    p = 1 / (1 + np.exp(-2 * frame["x"].to_numpy()))
    return frame, p, (rng.random(n) < p).astype(np.int64)


def registered_model(config, tmp_path):
    """Yields (db, store, version) of model ``m``, then closes the db (a fixture's body)."""
    db = open_metadata_db(config.metadata_url, create=True)
    store = open_artifact_store(config.storage_root)
    registry = RegistryClient(LocalBackend(ModelRegistry(db, store)), store)
    frame, p, labels = rows(np.random.default_rng(0), 4000)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"not loaded: the profile carries the scores")
    write_profile(build_profile(frame, INPUTS, task="binary", class_labels=[0, 1], outputs=p, labels=labels,
                                source="the holdout split of d@1"), model_dir)
    version = registry.register("m", model_dir, metrics={"accuracy": 0.8},
                                signature={"inputs": [f.model_dump() for f in INPUTS],
                                           "outputs": [{"name": "probability", "dtype": "float64"}]},
                                lineage={"dataset_version": "d@1"})
    yield db, store, version
    db.close()
