"""Protected aliases: a policy in the registry, requests, approvals that move the alias, refusals, expiry, audit.

Approvers are real API tokens in the same metadata DB: the registry itself checks them (role, scope,
revocation), and its audit log names the token, never what the client says of itself.
"""

from __future__ import annotations

import pytest

from aiinfra.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from aiinfra.identity.callers import Caller
from aiinfra.identity.tokens import TokenStore
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
    registry = RegistryClient(LocalBackend(ModelRegistry(db, store, clock=clock)), store)
    tokens = TokenStore(db, background=False)
    registry.tokens = {name: tokens.issue("approver", who="test") for name in ("alice", "bob", "carol", "dave")}
    registry.tokens["admin"] = tokens.issue("admin", who="test")
    registry.token_store = tokens
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "weights.safetensors").write_bytes(b"x" * 32)
    for _ in range(3):
        registry.register("churn", model_dir)
    registry.set_alias("churn", 1, "champion")
    registry.set_policy("churn", {"aliases": {"champion": {"approvals": 2, "expires": "1h"}}})
    yield registry, clock
    db.close()


def as_(registry, name):
    return registry.with_token(registry.tokens[name].token)


def tid(registry, name):
    return f"token:{registry.tokens[name].id}"


def test_a_protected_alias_moves_only_by_an_approved_request(world):
    registry, _ = world
    with pytest.raises(Forbidden, match="protected .*aiinfra models request churn 2 champion"):
        registry.set_alias("churn", 2, "champion")
    assert registry.set_alias("churn", 1, "champion").version == 1  # where it already points: nothing moves
    alice = as_(registry, "alice")
    request = alice.request_alias("churn", 2, "champion", reason="better on the holdout")
    assert (request.status, request.needed, request.requested_by) == ("pending", 2, tid(registry, "alice"))
    assert registry.request_alias("churn", 2, "champion").id == request.id  # a retried request is the same one

    with pytest.raises(Forbidden, match=f"{tid(registry, 'alice')} asked for .* may not approve it"):
        alice.approve(request.id)
    bob, carol = as_(registry, "bob"), as_(registry, "carol")
    assert bob.approve(request.id).status == "pending"
    with pytest.raises(Conflict, match="already approved .*1 of 2"):
        bob.approve(request.id)
    assert registry.get("churn@champion").version == 1
    done = carol.approve(request.id)
    assert done.status == "applied" and done.decided_by == tid(registry, "carol")
    assert [a.who for a in done.approvals] == [tid(registry, "bob"), tid(registry, "carol")]
    assert registry.get("churn@champion").version == 2
    with pytest.raises(Conflict, match="is applied"):
        as_(registry, "dave").approve(request.id)

    actions = [(e.action, e.who) for e in registry.audit("churn")]
    assert ("request_alias", tid(registry, "alice")) in actions and ("approve", tid(registry, "bob")) in actions
    moved = [e for e in registry.audit("churn") if e.action == "set_alias" and e.after.get("request") == request.id]
    assert moved and moved[0].who == tid(registry, "carol") and moved[0].before == {"alias": "champion", "version": 1}
    assert registry.verify_audit("churn")["intact"]


def test_a_request_expires_and_a_refused_one_stays_refused(world):
    registry, clock = world
    request = registry.request_alias("churn", 2, "champion")
    clock.now += 3600
    with pytest.raises(Conflict, match="is expired"):
        as_(registry, "bob").approve(request.id)
    assert registry.list_requests("churn", pending_only=True) == []
    assert registry.list_requests("churn")[0].status == "expired"
    assert registry.get("churn@champion").version == 1
    assert any(e.action == "request_expired" for e in registry.audit("churn"))

    again = registry.request_alias("churn", 3, "champion")
    refused = as_(registry, "bob").refuse(again.id, reason="slice regression on plan=basic")
    assert refused.status == "refused" and "slice regression" in refused.reason
    with pytest.raises(Conflict, match="is refused"):
        as_(registry, "carol").approve(again.id)


def test_self_approval_where_the_policy_allows_it_and_policy_validation(world):
    registry, _ = world
    with pytest.raises(Forbidden, match="to change the protection of churn's aliases, send an API token"):  # loosening a protection takes an admin
        registry.set_policy("churn", {"aliases": {"champion": {"approvals": 1, "self_approval": True}}})
    as_(registry, "admin").set_policy("churn", {"aliases": {"champion": {"approvals": 1, "self_approval": True}}})
    alice = as_(registry, "alice")
    request = alice.request_alias("churn", 3, "champion")
    assert alice.approve(request.id).status == "applied"
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
    with pytest.raises(Forbidden):
        registry.set_policy("churn", {"aliases": {}})
    as_(registry, "admin").set_policy("churn", {"aliases": {}})  # unprotected again, by an admin
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
        as_(registry, "bob").approve("../../etc")
    with pytest.raises(NotFound, match="no alias request"):
        as_(registry, "bob").approve("req-000000000000")


def test_a_pipeline_that_sets_aliases_gets_a_request_for_a_protected_one(world):
    registry, _ = world
    assert registry.alias_or_request("churn", 2, "challenger").version == 2  # unprotected: moved
    made = registry.alias_or_request("churn", 2, "champion", reason="gate passed")
    assert isinstance(made, AliasRequest) and made.reason == "gate passed"
    assert registry.get("churn@champion").version == 1


def test_the_registry_checks_an_approvers_token_itself(world):
    """What the client says is not what is recorded: the token decides, checked where the alias moves."""
    registry, _ = world
    request = registry.request_alias("churn", 2, "champion")
    with pytest.raises(Forbidden, match="to approve req-[0-9a-f]+, send an API token of one of the roles admin, approver"):
        registry.approve(request.id)  # no token: the client's own name approves nothing
    with pytest.raises(Forbidden, match="to refuse req-[0-9a-f]+, send an API token"):
        registry.refuse(request.id)
    store = registry.token_store
    predict = store.issue("predict", who="test")
    with pytest.raises(Forbidden, match="a 'predict' token may not approve"):
        registry.with_token(predict.token).approve(request.id)
    scoped = store.issue("approver", who="test", model="fraud")
    with pytest.raises(Forbidden, match="scoped to model 'fraud'"):
        registry.with_token(scoped.token).approve(request.id)
    store.revoke(registry.tokens["bob"].id)
    with pytest.raises(Unauthorized, match="invalid or revoked"):
        as_(registry, "bob").approve(request.id)
    forged = registry.tokens["carol"].token[:-4] + "AAAA"
    with pytest.raises(Unauthorized):
        registry.with_token(forged).approve(request.id)
    assert registry.get_request(request.id).approvals == []  # none of those counted
    assert not any(e.action == "approve" for e in registry.audit("churn"))
    assert as_(registry, "carol").approve(request.id).approvals[0].who == tid(registry, "carol")
    assert store.list()[[t["id"] for t in store.list()].index(registry.tokens["carol"].id)]["last_used_at"] is not None


def test_a_change_without_a_token_is_recorded_as_the_calling_process(world):
    registry, _ = world
    backend = registry._backend
    # What the client says of itself is recorded as that (a cluster member's word), with its Ray job;
    # it cannot take the form a token's proof has.
    backend.call("set_alias", "churn", 2, "challenger", caller=Caller(process="ci@build-7", job="02000000"))
    backend.call("set_alias", "churn", 3, "challenger", caller=Caller(process="x", service="autopilot"))
    backend.call("remove_alias", "churn", "challenger")
    whos = [(e.action, e.version, e.who) for e in registry.audit("churn")][::-1][:3]
    assert whos == [("remove_alias", 3, "unknown"), ("set_alias", 3, "autopilot"),
                    ("set_alias", 2, "ci@build-7 (job 02000000)")]
    with pytest.raises(InvalidInput, match="only .*for a checked API token"):
        backend.call("set_alias", "churn", 2, "challenger", caller=Caller(process="token:" + registry.tokens["bob"].id))
    for forged in (" Token:" + registry.tokens["bob"].id, "ci@x\ntoken:abc approve"):
        with pytest.raises(InvalidInput):
            backend.call("set_alias", "churn", 2, "challenger", caller=Caller(process=forged))
    assert "secret" not in repr(Caller(process="p", token="aii_x_secret"))
    registry.set_alias("churn", 2, "challenger")  # the client's own process: user@host, no job outside Ray
    assert "@" in registry.audit("churn")[-1].who and "(job" not in registry.audit("churn")[-1].who


def test_a_policy_that_counts_people_counts_each_person_once(world):
    """distinct_people: approvals count by whom each token was issued to (`token create --for`)."""
    registry, _ = world
    as_(registry, "admin").set_policy("churn", {"aliases": {"champion": {"approvals": 2, "distinct_people": True}}})
    assert registry.get_policy("churn").aliases["champion"].distinct_people
    store = registry.token_store
    ann = [store.issue("approver", who="test", holder="ann") for _ in range(2)]  # one person, two tokens
    ben, req = store.issue("approver", who="test", holder="ben"), store.issue("approver", who="test", holder="rita")
    rita_too = store.issue("approver", who="test", holder="rita")
    request = registry.with_token(req.token).request_alias("churn", 2, "champion")
    assert request.requested_by_person == "rita"

    with pytest.raises(Forbidden, match="counted by person: approve with a token issued to you"):
        as_(registry, "bob").approve(request.id)  # a token issued to no one in particular
    with pytest.raises(Forbidden, match=r"\(rita\) asked for .* may not approve it"):
        registry.with_token(rita_too.token).approve(request.id)  # the requester, with another of her tokens
    assert registry.with_token(ann[0].token).approve(request.id).approvals[0].person == "ann"
    with pytest.raises(Conflict, match=r"\(ann\) has already approved"):
        registry.with_token(ann[1].token).approve(request.id)  # her second token counts for nothing
    assert registry.get("churn@champion").version == 1
    done = registry.with_token(ben.token).approve(request.id)
    assert done.status == "applied" and [a.person for a in done.approvals] == ["ann", "ben"]
    assert registry.get("churn@champion").version == 2
    approvals = [e for e in registry.audit("churn") if e.action == "approve"]
    assert [e.after.get("person") for e in approvals] == ["ann", "ben"]
    with pytest.raises(InvalidInput, match="holder"):
        store.issue("approver", who="test", holder="x\n")


def test_nothing_moves_a_protected_alias_around_its_approvers(world):
    """Lifting the protection, removing the alias, or changing its traffic share each need an admin token."""
    registry, _ = world
    with pytest.raises(Forbidden, match="to change the protection of churn's aliases, send an API token"):
        registry.set_policy("churn", {"aliases": {}})
    with pytest.raises(Forbidden, match="a 'approver' token may not admin"):
        as_(registry, "bob").set_policy("churn", {"aliases": {}})
    with pytest.raises(Forbidden, match="to remove the protected alias churn@champion, send an API token"):
        registry.remove_alias("churn", "champion")
    with pytest.raises(Forbidden, match="protected"):
        registry.set_alias("churn", 1, "champion", share=0.5)  # the same version, a new share: not a no-op
    assert registry.get("churn@champion").version == 1 and registry.get_policy("churn").aliases
    registry.set_policy("churn", {"aliases": {"champion": {"approvals": 2, "expires": "1h"}}})  # the same: no-op
    as_(registry, "admin").remove_alias("churn", "champion")
    assert "champion" not in registry.get("churn@1").aliases
