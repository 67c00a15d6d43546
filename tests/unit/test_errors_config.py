from __future__ import annotations

import pickle

import pytest

from aiinfra import errors
from aiinfra.config import PlatformConfig, load_config


@pytest.mark.parametrize(
    "cls,status",
    [
        (errors.InvalidInput, 422),
        (errors.NotFound, 404),
        (errors.Conflict, 409),
        (errors.Unauthorized, 401),
        (errors.Forbidden, 403),
        (errors.ServiceUnavailable, 503),
        (errors.PayloadTooLarge, 413),
        (errors.ArtifactCorrupted, 500),
    ],
)
def test_error_status_and_pickling(cls, status):
    err = cls("model 'x' is not registered")
    assert isinstance(err, errors.AiInfraError)
    assert err.status_code == status
    back = pickle.loads(pickle.dumps(err))  # Ray carries errors across processes this way
    assert type(back) is cls and str(back) == "model 'x' is not registered"
    assert err.to_dict()["error"] == "model 'x' is not registered"


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={})
    assert cfg.home == (tmp_path / ".aiinfra").resolve()
    assert cfg.storage_root == str(cfg.home)
    assert cfg.metadata_url == f"sqlite:///{cfg.home}/metadata.db"
    assert cfg.ray_address is None and cfg.namespace == "aiinfra" and cfg.serve.port == 8000


def test_file_then_environment_override(tmp_path):
    f = tmp_path / "platform.yaml"
    f.write_text("home: /srv/a\nserve:\n  port: 9000\nstorage_root: s3://bucket/prefix\n")
    cfg = load_config(environ={"AIINFRA_CONFIG": str(f), "AIINFRA_HOME": str(tmp_path / "h"), "RAY_ADDRESS": "10.0.0.1:6379"})
    assert cfg.home == (tmp_path / "h").resolve()  # environment beats the file
    assert cfg.serve.port == 9000
    assert cfg.storage_root == "s3://bucket/prefix"
    assert cfg.ray_address == "10.0.0.1:6379"


def test_invalid_config_names_every_bad_field(tmp_path):
    f = tmp_path / "platform.yaml"
    f.write_text("serve:\n  port: 70000\nbogus: 1\n")
    with pytest.raises(errors.InvalidInput) as exc:
        load_config(environ={"AIINFRA_CONFIG": str(f)})
    assert "serve.port" in str(exc.value) and "bogus" in str(exc.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(errors.InvalidInput, match="nope.yaml"):
        load_config(environ={"AIINFRA_CONFIG": str(tmp_path / "nope.yaml")})


def test_config_is_frozen_and_picklable(config: PlatformConfig):
    with pytest.raises(Exception):
        config.namespace = "other"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(config)) == config


def test_the_batch_pool_autoscales_up_to_the_cluster_cpus_unless_bounded(tmp_path):
    from aiinfra.config import BatchSettings, validate_as

    default = PlatformConfig(home=tmp_path).batch
    assert default.pool_bounds(2.0) == (1, 4)  # half a CPU each
    assert default.pool_bounds(0.25) == (1, 1)  # never below the minimum
    assert BatchSettings(min_actors=2, max_actors=3).pool_bounds(64.0) == (2, 3)
    assert BatchSettings(actor_cpus=2.0).pool_bounds(16.0) == (1, 8)
    with pytest.raises(errors.InvalidInput, match=r"max_actors \(1\) is below min_actors \(2\)"):
        validate_as(BatchSettings, {"min_actors": 2, "max_actors": 1}, "batch")
