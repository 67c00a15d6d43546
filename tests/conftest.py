from __future__ import annotations

import pytest

from aiinfra.config import PlatformConfig, load_config


@pytest.fixture
def config(tmp_path) -> PlatformConfig:
    """A platform config whose storage and metadata DB live in this test's own directory."""
    return load_config(environ={}, home=str(tmp_path / "home"))
