"""What a served model's traffic is compared with: its reference profile.

Versions the training pipeline registered carry one (``aiinfra.monitoring.profile``): holdout rows,
their labels and the model's outputs on them, built once at registration and verified against the
version's recorded hashes when read. For a version without one, the drift part is built here as it
always was: the stored sample of the model's training dataset version (kept with every version by
the ingestion gate), restricted to the model's inputs, with the model's own scores on those rows as
the prediction-drift baseline (no labels, so no performance estimate). Numeric inputs get the KS
test, categorical (string or bool) inputs the chi-squared test; timestamps are not tested.
"""

from __future__ import annotations

import io
import tempfile

import numpy as np
import pyarrow.parquet as pq

from aiinfra.data.catalog import SAMPLE, DatasetCatalog
from aiinfra.errors import InvalidInput
from aiinfra.inference.scores import score_of
from aiinfra.monitoring.profile import PROFILE, PROFILE_META, ReferenceProfile, load_profile, tested_inputs
from aiinfra.registry.files import fetch_version_files
from aiinfra.registry.types import ModelVersion
from aiinfra.storage import ArtifactStore

__all__ = ["MAX_REFERENCE_ROWS", "build_reference", "stored_profile"]

MAX_REFERENCE_ROWS = 5_000


def stored_profile(store: ArtifactStore, version: ModelVersion) -> ReferenceProfile | None:
    """The profile registered with ``version``, its hashes checked; None when it has none.

    Raises:
        ArtifactCorrupted: a profile file is missing or does not match its recorded hash.
    """
    if PROFILE not in version.files or PROFILE_META not in version.files:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        files = {rel: version.files[rel] for rel in (PROFILE, PROFILE_META)}
        path = store.fetch_verified(version.artifact_key, files, tmp)
        return load_profile((path / PROFILE).read_bytes(), (path / PROFILE_META).read_bytes())


def build_reference(store: ArtifactStore, version: ModelVersion, *, datasets: DatasetCatalog,
                    seed: int = 0) -> ReferenceProfile:
    """The version's stored profile, else one built from its training dataset's sample, read from ``datasets``
    (the platform's catalog, which checks the manifest against the metadata DB and the sample against the
    manifest: the reference decides what counts as drift, so it is trusted only as written)."""
    if version.signature is None:
        raise InvalidInput(f"{version.ref} has no signature: there is nothing to monitor its inputs against")
    profile = stored_profile(store, version)
    if profile is not None:
        return profile
    return _from_dataset_sample(store, datasets, version, seed=seed)


def _from_dataset_sample(store: ArtifactStore, catalog: DatasetCatalog, version: ModelVersion, *,
                         seed: int) -> ReferenceProfile:
    # Here, not at the top: the predictor loads torch, and the monitor's clients (serving, the autopilot,
    # `aiinfra monitor`) import this module through monitoring.actor without needing it.
    from aiinfra.inference.predictor import Predictor, rows_from_frame

    assert version.signature is not None
    ref = version.lineage.dataset_version
    if not ref:
        raise InvalidInput(f"{version.ref} records no training dataset version in its lineage; it cannot be monitored")
    dataset = catalog.get(ref)
    if SAMPLE in dataset.files:
        frame = pq.read_table(io.BytesIO(catalog.read_file(dataset, SAMPLE))).to_pandas()
    else:
        frame = catalog.load(dataset).to_pandas()
    if len(frame) > MAX_REFERENCE_ROWS:
        frame = frame.sample(MAX_REFERENCE_ROWS, random_state=seed)
    numeric, categorical = tested_inputs(version.signature.inputs, frame.columns)
    if not numeric and not categorical:
        raise InvalidInput(f"{dataset.ref} holds none of {version.ref}'s inputs")
    frame = frame.reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor(version, fetch_version_files(store, version, tmp))
        rows = rows_from_frame(frame, version.signature.inputs)
        scores = np.array([score_of(p) for p in predictor.predict(rows)], dtype=np.float64)
    return ReferenceProfile(frame[numeric + categorical], numeric, categorical, scores, task=predictor.spec.task,
                            class_labels=list(predictor.spec.class_labels), source=dataset.ref)
