"""The demo's data spec and training recipe: the example files in ``jobs/configs/``, read, not restated.

The demo ingests with ``customers_spec.yaml`` and trains with ``churn.yaml`` (whose transforms are
``customers_features.yaml``), the same files a user passes to ``aiinfra data ingest`` and
``aiinfra train``. The demo runs from a source checkout (``make demo``, or a Ray job submitted with
``--working-dir .``), which is where those files are.
"""

from __future__ import annotations

from pathlib import Path

from aiinfra.data.spec import ValidationSpec, load_spec
from aiinfra.errors import NotFound
from aiinfra.training.config import TrainConfig, load_train_config

__all__ = ["EXAMPLE_CONFIGS", "example_config", "training_config", "validation_spec"]

EXAMPLE_CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"

# Where the demo departs from churn.yaml, and why. Its retrain's held-out rows are its newest production
# rows, a few hundred: per-slice ROC-AUC on so few is noisy, so only slices of 100 rows or more are
# compared, with 0.15 of slack; the canary on live labelled traffic is the stronger check.
DEMO_GATE = {"metric": "roc_auc", "max_slice_regression": 0.15, "min_slice_rows": 100}


def example_config(name: str) -> Path:
    """``jobs/configs/<name>``, or NotFound saying where the demo looked."""
    path = EXAMPLE_CONFIGS / name
    if not path.is_file():
        raise NotFound(f"example config {path} not found: the demo reads jobs/configs/ of a source checkout")
    return path


def validation_spec() -> ValidationSpec:
    """The rules the demo's customer data is ingested with."""
    return load_spec(example_config("customers_spec.yaml"))


def training_config(dataset_version: str, *, epochs: int, seed: int) -> TrainConfig:
    """churn.yaml on the ingested ``dataset_version``, for ``epochs`` from ``seed``, with the demo's gate."""
    recipe = load_train_config(example_config("churn.yaml")).model_dump(mode="json", exclude_none=True)
    recipe["data"]["dataset"] = dataset_version
    recipe["trainer"].update(epochs=epochs, seed=seed)
    recipe["gate"] = dict(DEMO_GATE)
    return load_train_config(recipe)
