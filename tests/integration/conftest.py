"""One Ray cluster for the whole integration session (starting Ray costs 4 to 12 s here)."""

from __future__ import annotations

import pytest
import ray

from aiinfra.config import load_config
from aiinfra.platform import connect


@pytest.fixture(scope="session")
def ray_session():
    # address="local": always our own cluster, never a developer's running one.
    ray.init(address="local", num_cpus=2, namespace="aiinfra", include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def platform_config(ray_session, tmp_path_factory):
    return load_config(environ={}, home=str(tmp_path_factory.mktemp("aiinfra-home")))


@pytest.fixture(scope="session")
def platform(platform_config):
    p = connect(platform_config)
    yield p
    from aiinfra.registry.actor import get_registry_actor

    ray.kill(get_registry_actor(platform_config, create=False), no_restart=True)
    p.close()
