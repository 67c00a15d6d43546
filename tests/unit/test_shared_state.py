"""A cluster of several nodes refuses node-local state, saying what to configure (no Ray: the node count is given)."""

from __future__ import annotations

from aiinfra.config import load_config, local_state_problem


def test_one_node_may_keep_everything_local(tmp_path):
    assert local_state_problem(load_config(environ={"AIINFRA_HOME": str(tmp_path)}), nodes=1) is None


def test_several_nodes_on_a_sqlite_file_and_a_local_root_are_refused_with_what_to_configure(tmp_path):
    problem = local_state_problem(load_config(environ={"AIINFRA_HOME": str(tmp_path)}), nodes=3)
    assert problem is not None and "3 nodes" in problem
    assert "metadata: {type: postgresql" in problem and "AIINFRA_METADATA_URL=postgresql://" in problem
    assert "storage_root: s3://" in problem and str(tmp_path) in problem


def test_postgres_and_object_storage_serve_any_number_of_nodes(tmp_path):
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_STORAGE_ROOT": "s3://lake/aiinfra",
                                  "AIINFRA_METADATA_URL": "postgresql://u:hunter2@db:5432/aiinfra"})
    assert local_state_problem(config, nodes=40) is None


def test_half_shared_state_names_only_what_is_local(tmp_path):
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path),
                                  "AIINFRA_METADATA_URL": "postgresql://u:hunter2@db:5432/aiinfra"})
    problem = local_state_problem(config, nodes=2)
    assert "storage root" in problem and "SQLite" not in problem and "hunter2" not in problem


def test_a_shared_file_system_is_the_users_to_declare(tmp_path):
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_SHARED_LOCAL_STATE": "1"})
    assert config.shared_local_state and local_state_problem(config, nodes=4) is None


def test_the_metadata_url_may_come_from_a_mounted_secret_file(tmp_path):
    secret = tmp_path / "metadata-url"
    secret.write_text("postgresql://u:hunter2@db:5432/aiinfra\n")
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_METADATA_URL_FILE": str(secret)})
    assert config.metadata_url == "postgresql://u:hunter2@db:5432/aiinfra" and "hunter2" not in repr(config)
    # the variable itself still wins, as the environment does over files everywhere else
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_METADATA_URL_FILE": str(secret),
                                  "AIINFRA_METADATA_URL": "postgresql://v:w@other/db"})
    assert config.metadata_url == "postgresql://v:w@other/db"


def test_a_missing_or_empty_secret_file_names_the_file_not_its_contents(tmp_path):
    import pytest

    from aiinfra.errors import InvalidInput

    with pytest.raises(InvalidInput, match="AIINFRA_METADATA_URL_FILE .*nope"):
        load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_METADATA_URL_FILE": str(tmp_path / "nope")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidInput, match="is empty"):
        load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_METADATA_URL_FILE": str(tmp_path / "empty")})
