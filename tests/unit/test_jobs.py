"""What a submitted job gets of its submitter's config, and how it reads it back (no Ray, no job server)."""

from __future__ import annotations

import json

import pytest

from aiinfra.config import ENV, load_config
from aiinfra.errors import InvalidInput, ServiceUnavailable
from aiinfra.jobs import job_server, shippable_config


def test_the_job_reads_back_exactly_the_config_it_was_submitted_with(tmp_path):
    f = tmp_path / "platform.yaml"
    f.write_text("monitoring: {window_rows: 250, sample_rate: 0.5}\nserve: {canary_share: 0.2}\n")
    submitter = load_config(environ={"AIINFRA_CONFIG": str(f), "AIINFRA_HOME": str(tmp_path / "h")})
    shipped = json.dumps(shippable_config(submitter))
    # The job's node knows no config file; its own AIINFRA_HOME differs: the submitter's settings win.
    job = load_config(environ={ENV.SUBMITTED_CONFIG.name: shipped, "AIINFRA_HOME": "/elsewhere"})
    assert job == submitter
    assert job.monitoring.window_rows == 250 and job.serve.canary_share == 0.2


def test_credentials_are_not_shipped_and_come_from_the_jobs_own_environment(tmp_path):
    url = "postgresql://aiinfra:hunter2@db.internal:5432/aiinfra"
    submitter = load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_METADATA_URL": url})
    shipped = shippable_config(submitter)
    assert "metadata_url" not in shipped and "hunter2" not in json.dumps(shipped)
    job = load_config(environ={ENV.SUBMITTED_CONFIG.name: json.dumps(shipped), "AIINFRA_METADATA_URL": url})
    assert job.metadata_url == url


def test_the_submitters_ray_address_is_not_shipped_the_job_joins_its_own_cluster(tmp_path):
    # A submitter pointed at the dashboard (RAY_ADDRESS=http://HEAD:8265); the job's driver gets the GCS address.
    submitter = load_config(environ={"AIINFRA_HOME": str(tmp_path), "RAY_ADDRESS": "http://127.0.0.1:8265"})
    shipped = shippable_config(submitter)
    assert "ray_address" not in shipped
    job = load_config(environ={ENV.SUBMITTED_CONFIG.name: json.dumps(shipped), "RAY_ADDRESS": "10.0.0.1:6379"})
    assert job.ray_address == "10.0.0.1:6379"


def test_a_malformed_shipped_config_is_refused_by_name():
    with pytest.raises(InvalidInput, match="AIINFRA_SUBMITTED_CONFIG is not valid JSON"):
        load_config(environ={ENV.SUBMITTED_CONFIG.name: "{nope"})
    with pytest.raises(InvalidInput, match="monitoring.window_rows"):
        load_config(environ={ENV.SUBMITTED_CONFIG.name: json.dumps({"monitoring": {"window_rows": 1}})})


def test_the_job_server_is_the_dashboard_url_given_or_the_one_up_recorded(tmp_path):
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path), "RAY_ADDRESS": "http://head:8265"})
    assert job_server(config) == "http://head:8265"
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path)})
    with pytest.raises(ServiceUnavailable, match="aiinfra up"):
        job_server(config)
    (tmp_path / "cluster.json").write_text(json.dumps({"dashboard_url": "http://127.0.0.1:8265"}))
    assert job_server(config) == "http://127.0.0.1:8265"


def test_drivers_ask_for_the_configured_entrypoint_resources(tmp_path):
    from aiinfra.jobs import entrypoint_options

    assert entrypoint_options(load_config(environ={"AIINFRA_HOME": str(tmp_path)})) == {}  # the embedded default
    f = tmp_path / "platform.yaml"
    f.write_text("jobs: {entrypoint_num_cpus: 0.5, entrypoint_resources: {aiinfra_driver: 1}}\n")
    config = load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_CONFIG": str(f)})
    assert entrypoint_options(config) == {"entrypoint_num_cpus": 0.5, "entrypoint_resources": {"aiinfra_driver": 1.0}}
    f.write_text("jobs: {entrypoint_cpus: 1}\n")
    with pytest.raises(InvalidInput, match="jobs.entrypoint_cpus"):
        load_config(environ={"AIINFRA_HOME": str(tmp_path), "AIINFRA_CONFIG": str(f)})
