"""The demo trains and ingests with the example files in jobs/configs/, departing only where it says."""

from __future__ import annotations

import pyarrow as pa
import pytest

from aiinfra.data.synthetic import make_customers
from aiinfra.data.validation import validate_batch
from aiinfra.demo import configs
from aiinfra.errors import NotFound
from aiinfra.training.config import load_train_config


def test_the_demo_trains_churn_yaml_with_its_own_epochs_seed_and_gate():
    cfg = configs.training_config("customers@0123456789ab", epochs=3, seed=7)
    example = load_train_config(configs.EXAMPLE_CONFIGS / "churn.yaml")
    assert cfg.data.dataset == "customers@0123456789ab"
    assert (cfg.trainer.epochs, cfg.trainer.seed) == (3, 7)
    assert cfg.gate.model_dump(exclude_defaults=True) == configs.DEMO_GATE
    same = {"data": {"dataset"}, "trainer": {"epochs", "seed"}, "gate": True}
    assert cfg.model_dump(exclude=same) == example.model_dump(exclude=same)


def test_the_demo_data_passes_the_example_spec():
    table = pa.Table.from_pandas(make_customers(2_000, seed=5), preserve_index=False)
    checked = validate_batch(table, configs.validation_spec())
    assert checked.bad.num_rows == 0 and checked.good.num_rows == 2_000


def test_a_missing_example_config_says_where_the_demo_looked(monkeypatch, tmp_path):
    monkeypatch.setattr(configs, "EXAMPLE_CONFIGS", tmp_path)
    with pytest.raises(NotFound, match="jobs/configs"):
        configs.validation_spec()
