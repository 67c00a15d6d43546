"""Canary routing: a stable share of request ids goes to the challenger."""

from __future__ import annotations

from aiinfra.serving.routing import goes_to_challenger, stable_fraction


def test_the_share_holds_over_many_ids_and_an_id_always_goes_the_same_way():
    picks = [goes_to_challenger("churn", f"req-{i}", 0.1) for i in range(5000)]
    assert 0.08 <= sum(picks) / len(picks) <= 0.12
    assert picks == [goes_to_challenger("churn", f"req-{i}", 0.1) for i in range(5000)]


def test_no_share_no_canary_and_models_hash_independently():
    assert not any(goes_to_challenger("churn", f"r{i}", 0.0) for i in range(1000))
    a = [goes_to_challenger("churn", f"r{i}", 0.5) for i in range(1000)]
    b = [goes_to_challenger("fraud", f"r{i}", 0.5) for i in range(1000)]
    assert a != b
    assert 0.0 <= stable_fraction("x") < 1.0 and stable_fraction("x") == stable_fraction("x")
