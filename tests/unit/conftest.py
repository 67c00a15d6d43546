"""Unit tests never start Ray: the fixture below makes any ray.init fail the test."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests/unit must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def registered(config, tmp_path):
    """A registered model ``m`` with a reference profile: (db, store, version) (tests/unit/monitored.py)."""
    import monitored

    yield from monitored.registered_model(config, tmp_path)
