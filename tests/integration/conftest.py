"""One Ray cluster for the whole integration session (starting Ray costs 4 to 12 s here)."""

from __future__ import annotations

import pytest
import ray

from aiinfra.config import load_config
from aiinfra.platform import connect


@pytest.fixture(scope="session")
def ray_session():
    from aiinfra.cluster_access import clear_stale_cluster_pointer

    clear_stale_cluster_pointer()  # a dead cluster named there breaks Ray Train's placement-group cleanup
    # address="local": always our own cluster, never a developer's running one.
    ray.init(
        address="local", num_cpus=2, namespace="aiinfra", log_to_driver=False,
        # The dashboard stays on: Ray Train V2 frees a dead run's placement group through the State API it
        # serves; without it a trial stopped by ASHA keeps its CPUs reserved and the next trial waits forever.
        # Credentials for the loopback S3 server (moto) the s3:// tests start: Ray Data's tasks
        # read and write there from worker processes, which take their environment from here.
        runtime_env={"env_vars": {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def platform_config(ray_session, tmp_path_factory):
    return load_config(environ={}, home=str(tmp_path_factory.mktemp("aiinfra-home")))


@pytest.fixture(scope="session")
def platform(platform_config):
    p = connect(platform_config)
    yield p
    from aiinfra.features.actor import get_feature_store_actor
    from aiinfra.registry.actor import get_registry_actor

    ray.kill(get_registry_actor(platform_config, create=False), no_restart=True)
    ray.kill(get_feature_store_actor(platform_config, create=False), no_restart=True)
    p.close()
