"""Protected aliases: a policy in the registry, requests, approvals that move the alias, refusals, expiry, audit."""

from __future__ import annotations

import pytest

from aiinfra.errors import Conflict, Forbidden, InvalidInput, NotFound
from aiinfra.registry.approvals import AliasRequest
from aiinfra.registry.client import RegistryClient
from aiinfra.registry.core import ModelRegistry
from aiinfra.service import LocalBackend
from aiinfra.storage import open_artifact_store, open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts.
pytestmark = pytest.mark.store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(config, tmp_path):
    db = open_metadata_db(config.metadata_url, create=True)
    store = open_artifact_store(config.storage_root)
    clock = Clock()
    registry = RegistryClient(LocalBackend(ModelRegistry(db, store, clock=clock)), store, who="alice@host")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "weights.safetensors").write_bytes(b"x" * 32)
    for _ in range(3):
        registry.register("churn", model_dir)
    registry.set_alias("churn", 1, "champion")
    registry.set_policy("churn", {"aliases": {"champion": {"approvals": 2, "expires": "1h"}}})
    yield registry, clock
    db.close()


def test_a_protected_alias_moves_only_by_an_approved_request(world):
    registry, _ = world
    with pytest.raises(Forbidden, match="protected .*aiinfra models request churn 2 champion"):
        registry.set_alias("churn", 2, "champion")
    assert registry.set_alias("churn", 1, "champion").version == 1  # where it already points: nothing moves
    request = registry.request_alias("churn", 2, "champion", reason="better on the holdout")
    assert (request.status, request.needed, request.requested_by) == ("pending", 2, "alice@host")
    assert registry.request_alias("churn", 2, "champion").id == request.id  # a retried request is the same one

    with pytest.raises(Forbidden, match="alice@host asked for .* may not approve it"):
        registry.approve(request.id)
    bob, carol = registry.acting_as("token:bob"), registry.acting_as("token:carol")
    assert bob.approve(request.id).status == "pending"
    with pytest.raises(Conflict, match="already approved .*1 of 2"):
        bob.approve(request.id)
    assert registry.get("churn@champion").version == 1
    done = carol.approve(request.id)
    assert done.status == "applied" and done.decided_by == "token:carol"
    assert [a.who for a in done.approvals] == ["token:bob", "token:carol"]
    assert registry.get("churn@champion").version == 2
    with pytest.raises(Conflict, match="is applied"):
        registry.acting_as("token:dave").approve(request.id)

    actions = [(e.action, e.who) for e in registry.audit("churn")]
    assert ("request_alias", "alice@host") in actions and ("approve", "token:bob") in actions
    moved = [e for e in registry.audit("churn") if e.action == "set_alias" and e.after.get("request") == request.id]
    assert moved and moved[0].who == "token:carol" and moved[0].before == {"alias": "champion", "version": 1}
    assert registry.verify_audit("churn")["intact"]


def test_a_request_expires_and_a_refused_one_stays_refused(world):
    registry, clock = world
    request = registry.request_alias("churn", 2, "champion")
    clock.now += 3600
    with pytest.raises(Conflict, match="is expired"):
        registry.acting_as("token:bob").approve(request.id)
    assert registry.list_requests("churn", pending_only=True) == []
    assert registry.list_requests("churn")[0].status == "expired"
    assert registry.get("churn@champion").version == 1
    assert any(e.action == "request_expired" for e in registry.audit("churn"))

    again = registry.request_alias("churn", 3, "champion")
    refused = registry.acting_as("token:bob").refuse(again.id, reason="slice regression on plan=basic")
    assert refused.status == "refused" and "slice regression" in refused.reason
    with pytest.raises(Conflict, match="is refused"):
        registry.acting_as("token:carol").approve(again.id)


def test_self_approval_where_the_policy_allows_it_and_policy_validation(world):
    registry, _ = world
    registry.set_policy("churn", {"aliases": {"champion": {"approvals": 1, "self_approval": True}}})
    request = registry.request_alias("churn", 3, "champion")
    assert registry.approve(request.id).status == "applied"
    assert registry.get("churn@champion").version == 3
    assert registry.get_policy("churn").aliases["champion"].self_approval

    for bad, message in [({"aliases": {"champion": {"approvals": 0}}}, "approvals"),
                         ({"aliases": {"champion": {"approvals": 1, "expires": "soon"}}}, "not a duration"),
                         ({"aliases": {"latest": {"approvals": 1}}}, "reserved"),
                         ({"rules": {}}, "rules")]:
        with pytest.raises(InvalidInput, match=message):
            registry.set_policy("churn", bad)
    with pytest.raises(NotFound):
        registry.set_policy("nope", {"aliases": {}})
    registry.set_policy("churn", {"aliases": {}})  # unprotected again
    assert registry.set_alias("churn", 1, "champion").version == 1


def test_requests_that_cannot_be_made_are_refused(world):
    registry, _ = world
    with pytest.raises(InvalidInput, match="not protected: set it directly"):
        registry.request_alias("churn", 2, "challenger")
    with pytest.raises(NotFound, match="no version 9"):
        registry.request_alias("churn", 9, "champion")
    registry.archive("churn", 3)
    with pytest.raises(Conflict, match="archived"):
        registry.request_alias("churn", 3, "champion")
    with pytest.raises(InvalidInput, match="not a request id"):
        registry.approve("../../etc")
    with pytest.raises(NotFound, match="no alias request"):
        registry.approve("req-000000000000")


def test_a_pipeline_that_sets_aliases_gets_a_request_for_a_protected_one(world):
    registry, _ = world
    assert registry.alias_or_request("churn", 2, "challenger").version == 2  # unprotected: moved
    made = registry.alias_or_request("churn", 2, "champion", reason="gate passed")
    assert isinstance(made, AliasRequest) and made.reason == "gate passed"
    assert registry.get("churn@champion").version == 1
