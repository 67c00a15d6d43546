"""A run's checkpoints are loaded only if the run recorded their digest with the registry (checkpoint_ledger.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from aiinfra.errors import ArtifactCorrupted, InvalidInput
from aiinfra.registry.core import ModelRegistry
from aiinfra.service import LocalBackend
from aiinfra.storage import open_artifact_store, open_metadata_db
from aiinfra.training.checkpoint_ledger import CheckpointLedger, checkpoint_digest
from aiinfra.training.checkpoints import TrainingState, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.store


@pytest.fixture
def registry(config):
    db = open_metadata_db(config.metadata_url, create=True)
    yield LocalBackend(ModelRegistry(db, open_artifact_store(config.storage_root)))
    db.close()


def _checkpoint(directory, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters())
    return save_checkpoint(directory, model, None, optimizer, TrainingState(epoch=2, seed=seed))


def test_a_recorded_checkpoint_loads_and_a_changed_one_is_refused(registry, tmp_path):
    ledger = CheckpointLedger(registry.call, "run-0123456789ab")
    d = _checkpoint(tmp_path / "ckpt")
    digest = ledger.record(d)
    ledger.verify(d, where="local")  # as written
    with ledger.verified(d, where="local") as copy:  # what is loaded is a private copy, checked
        assert copy != d and load_checkpoint(copy)[3].epoch == 2
    assert load_checkpoint(d)[3].epoch == 2

    weights = load_checkpoint(d)[0]
    weights["weight"] = torch.full_like(weights["weight"], 9.0)
    save_file(weights, str(d / "model.safetensors"))  # new weights, a well-formed file
    with pytest.raises(ArtifactCorrupted, match="not one the run wrote .*refusing to load it"):
        ledger.verify(d, where="s3://lake/checkpoints/x")
    assert checkpoint_digest(d) != digest

    other = CheckpointLedger(registry.call, "run-other")  # a checkpoint another run wrote is not this run's
    d2 = _checkpoint(tmp_path / "c2", seed=1)
    ledger.record(d2)
    with pytest.raises(ArtifactCorrupted):
        other.verify(d2, where="local")


def test_the_digest_covers_names_and_files_but_not_rays_dot_files(tmp_path):
    d = _checkpoint(tmp_path / "ckpt")
    before = checkpoint_digest(d)
    (d / ".metadata.json").write_text("{}")  # Ray's own
    assert checkpoint_digest(d) == before
    (d / "extra.bin").write_bytes(b"x")
    assert checkpoint_digest(d) != before
    (d / "extra.bin").unlink()
    (d / "state.json").rename(d / "state2.json")
    assert checkpoint_digest(d) != before


def test_the_registry_refuses_bad_run_names_and_digests(registry):
    with pytest.raises(InvalidInput, match="64 lowercase hex"):
        registry.call("record_checkpoint", "run-1", "abc")
    with pytest.raises(InvalidInput):
        registry.call("record_checkpoint", "../etc", "0" * 64)
    assert registry.call("checkpoint_recorded", "run-1", "0" * 64) is False
