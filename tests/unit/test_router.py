"""The router's decisions without Ray or HTTP: fakes for the registry, the model deployments, the monitor,
the feature store and the clock; real TokenStore and routing hash."""

from __future__ import annotations

import asyncio

import pytest

from aiinfra.config import load_config
from aiinfra.errors import AtCapacity, Forbidden, InvalidInput, NotFound, ServiceUnavailable, Unauthorized
from aiinfra.identity.tokens import TokenStore
from aiinfra.registry.types import FieldSpec, Lineage, ModelVersion, Signature
from aiinfra.serving.router import MONITOR_RETRY_S, Router
from aiinfra.serving.routing import goes_to_challenger
from aiinfra.storage import FileDigest, open_metadata_db

SIGNATURE = Signature(inputs=[FieldSpec(name="x", dtype="float64"), FieldSpec(name="plan", dtype="string")],
                      outputs=[FieldSpec(name="label", dtype="int64"), FieldSpec(name="probability", dtype="float64")])


def version(n: int, *, view: str | None = None, shares: dict[str, float] | None = None) -> ModelVersion:
    return ModelVersion(name="churn", version=n, status="active", created_at=0.0, created_by="t", artifact_uri="x",
                        files={"w": FileDigest("0" * 64, 1)}, signature=SIGNATURE,
                        lineage=Lineage(**({"feature_view": view} if view else {})), alias_shares=shares or {})


class FakeRegistry:
    """References -> versions; tests move aliases by assigning ``refs``."""

    def __init__(self, **refs: ModelVersion) -> None:
        self.refs = {k.replace("_", "@"): v for k, v in refs.items()}
        self.fail = False

    def get(self, ref: str) -> ModelVersion:
        if self.fail:
            raise ConnectionError("registry down")
        if ref not in self.refs:
            raise NotFound(f"no {ref}")
        return self.refs[ref]


class FakeModels:
    """The model deployments: each answers with its role and version; ``events`` records warms and answers."""

    def __init__(self, roles=("champion", "challenger", "shadow")) -> None:
        self.roles = frozenset(roles)
        self.events: list[tuple[str, str, int]] = []
        self.error: Exception | None = None

    async def answer(self, role, version, rows):
        self.events.append(("answer", role, version.version))
        if self.error is not None:
            raise self.error
        return [{"label": 1, "probability": 0.25, "by": f"{role}:{version.version}"} for _ in rows]

    def answer_blocking(self, role, version, rows):
        self.events.append(("mirror", role, version.version))
        return [{"label": 1, "probability": 0.5} for _ in rows]

    def warm(self, role, version):
        self.events.append(("warm", role, version.version))


class FakeMonitor:
    def __init__(self) -> None:
        self.observed: list[tuple] = []
        self.tokens: list[list] = []
        self.fail: Exception | None = None

    def observe(self, rows, scores, request_ids, labels, versions, errors, tokens, *, probabilities=None):
        if self.fail is not None:
            raise self.fail
        self.probabilities = probabilities
        # As plain lists: a replica ships rows as Columns, scores and labels as arrays, ids once per request (Runs).
        def plain(values):
            return values.tolist() if hasattr(values, "tolist") else None if values is None else list(values)

        self.observed.append((plain(rows), plain(scores), plain(request_ids), plain(labels), plain(versions), errors))
        self.tokens.append(plain(tokens))

    def feedback(self, items):
        if self.fail is not None:
            raise self.fail
        return {"matched": len(items), "unknown": 0, "invalid": 0, "outcomes": ["matched"] * len(items)}


class FakeFeatures:
    def __init__(self, known: dict) -> None:
        self.known, self.calls = known, []

    def get_online_features(self, view, entity_ids):
        self.calls.append((view, list(entity_ids)))
        return [{"entity": e, "status": "ok", "features": self.known[e]} if e in self.known
                else {"entity": e, "status": "missing", "features": {}} for e in entity_ids]


class FakePredictor:
    def __init__(self, v: int) -> None:
        self.v = v

    def predict(self, rows):
        return [{"label": 0, "probability": 0.1, "by": f"local:{self.v}"} for _ in rows]


class FakeLocal:
    """LoadedVersions for the champion in the router: ``loaded`` only after ``get``."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self._loaded: dict[int, FakePredictor] = {}

    def loaded(self, v):
        return self._loaded.get(v)

    def get(self, v):
        self.got.append(v)
        return self._loaded.setdefault(v, FakePredictor(v))


@pytest.fixture
def config(tmp_path):
    return load_config(environ={}, home=str(tmp_path))


@pytest.fixture
def tokens(metadata_url):
    return TokenStore(open_metadata_db(metadata_url))


def make_router(config, tokens, registry=None, *, models=None, local=None, monitor=None, features=None,
                clock=None, canary=0.1, shadow=1.0, ongoing=2, queued=1, sample_rate=1.0, canary_share=None,
                ref="churn@champion"):
    cfg = config.model_copy(update={
        "serve": config.serve.model_copy(update={"canary_share": canary, "shadow_share": shadow,
                                                 "max_ongoing_requests": ongoing, "max_queued_requests": queued}),
        "monitoring": config.monitoring.model_copy(update={"enabled": sample_rate > 0, "sample_rate": sample_rate}),
    })
    return Router(cfg, ref, registry=registry or FakeRegistry(churn_champion=version(1)), tokens=tokens,
                  models=models or FakeModels(), local=local, monitor=monitor or FakeMonitor(),
                  features=features, canary_share=canary_share, clock=clock or (lambda: 0.0), background=False)


def test_auth_is_401_without_a_valid_token_and_403_without_the_role(config, tokens):
    router = make_router(config, tokens)
    labeller_only = tokens.create("labeller")
    with pytest.raises(Unauthorized):
        router.authorize(None, "predict")
    with pytest.raises(Unauthorized):
        router.authorize("Bearer aii_00000000_wrong", "predict")
    with pytest.raises(Forbidden, match="may not predict"):
        router.authorize(f"Bearer {labeller_only}", "predict")
    router.authorize(f"Bearer {labeller_only}", "feedback")
    router.authorize(f"Bearer {tokens.create('predict')}", "predict")
    with pytest.raises(NotFound, match="serves 'churn'"):
        router.check_name("other")
    router.check_name("churn")


def test_a_token_scoped_to_another_model_is_refused_here(config, tokens):
    router = make_router(config, tokens)
    with pytest.raises(Forbidden, match="scoped to model 'fraud'"):
        router.authorize(f"Bearer {tokens.create('predict', model='fraud')}", "predict")
    router.authorize(f"Bearer {tokens.create('predict', model='churn')}", "predict")
    with pytest.raises(Forbidden, match="may not feedback"):
        router.authorize(f"Bearer {tokens.create('predict', model='churn')}", "feedback")  # predicting is not labelling


def test_the_request_id_is_the_clients_or_a_new_one(config, tokens):
    router = make_router(config, tokens)
    assert router.request_id("  r-1 ") == "r-1"
    fresh = {router.request_id(None), router.request_id(""), router.request_id("   ")}
    assert len(fresh) == 3 and all(len(r) == 32 for r in fresh)
    with pytest.raises(InvalidInput, match="X-Request-ID"):
        router.request_id("r" * 201)


def test_the_canary_takes_its_share_by_request_id_and_a_retry_lands_on_the_same_version(config, tokens):
    registry = FakeRegistry(churn_champion=version(1), churn_challenger=version(2))
    models = FakeModels()
    router = make_router(config, tokens, registry, models=models, canary=0.3)
    assert router.route("any") == ("champion", registry.refs["churn@champion"])  # nothing followed yet
    router.refresh()
    assert ("warm", "challenger", 2) in models.events
    ids = [f"req-{i}" for i in range(2000)]
    roles = {i: router.route(i)[0] for i in ids}
    key = tokens.routing_key()
    assert len(key) == 32 and TokenStore(tokens.db).routing_key() == key  # one key for every replica
    assert all((roles[i] == "challenger") == goes_to_challenger("churn", i, 0.3, key) for i in ids)
    # Keyed: the public hash of an id says nothing about its arm, so a client cannot pick ids for an arm.
    public = [goes_to_challenger("churn", i, 0.3) for i in ids]
    # Independent rules agree on 0.7^2 + 0.3^2 = 0.58 of ids (sd 0.011 at 2,000; the key is random each run, so
    # the bounds are 6 sd wide); the same rule would agree on all of them.
    assert 0.51 < sum(p == (roles[i] == "challenger") for p, i in zip(public, ids)) / len(ids) < 0.65
    assert 0.25 < sum(r == "challenger" for r in roles.values()) / len(ids) < 0.35
    assert all(router.route(i)[0] == roles[i] for i in ids[:100])  # stable: a retry reaches the same version
    assert router.route(next(i for i in ids if roles[i] == "challenger"))[1].version == 2


def test_the_share_the_challenger_alias_carries_wins_over_the_default(config, tokens):
    registry = FakeRegistry(churn_champion=version(1), churn_challenger=version(2, shares={"challenger": 0.5}))
    router = make_router(config, tokens, registry, canary=0.1, canary_share=lambda: 0.2)
    router.refresh()
    assert router.canary_share == 0.5
    registry.refs["churn@challenger"] = version(2)  # no share with the alias: the injected default
    router.refresh()
    assert router.canary_share == 0.2
    assert router.served()["canary"] == {"version": 2, "share": 0.2}


def test_an_alias_move_warms_the_new_version_before_it_is_swapped_in(config, tokens):
    registry = FakeRegistry(churn_champion=version(1))
    models = FakeModels()
    router = make_router(config, tokens, registry, models=models)
    seen_at_warm = []
    models.warm = lambda role, v: seen_at_warm.append((role, v.version, router.primary.version))
    registry.refs["churn@champion"] = version(2)
    router.refresh()
    assert seen_at_warm == [("champion", 2, 1)]  # warmed while version 1 still answered
    assert router.route("r")[1].version == 2
    router.refresh()
    assert seen_at_warm == [("champion", 2, 1)]  # unchanged: not warmed again


def test_a_failed_warm_keeps_serving_the_old_version(config, tokens):
    registry = FakeRegistry(churn_champion=version(1))
    models = FakeModels()
    router = make_router(config, tokens, registry, models=models)

    def fail(role, v):
        raise TimeoutError("deployment did not load it")

    models.warm = fail
    registry.refs["churn@champion"] = version(2)
    router.refresh()  # logged, not raised
    assert router.primary.version == 1
    registry.fail = True
    router.refresh()
    assert router.primary.version == 1


def test_the_champion_in_the_router_is_warmed_and_answered_here(config, tokens):
    registry = FakeRegistry(churn_champion=version(1))
    local, models = FakeLocal(), FakeModels(roles=("challenger", "shadow"))
    router = make_router(config, tokens, registry, models=models, local=local)
    assert local.got == [1]  # loaded at start
    out = asyncio.run(router.answer("champion", router.primary, [{"x": 1.0}]))
    assert out[0]["by"] == "local:1" and not models.events
    registry.refs["churn@champion"] = version(3)
    router.refresh()
    assert local.got == [1, 3] and router.primary.version == 3
    assert router.served()["deployments"] == {"champion": "ModelServer (in the router)",
                                               "challenger": "ModelVersions (challenger)",
                                               "shadow": "ModelVersions (shadow)"}


def test_a_challenger_that_is_the_champion_is_no_canary(config, tokens):
    registry = FakeRegistry(churn_champion=version(1), churn_challenger=version(1))
    models = FakeModels()
    router = make_router(config, tokens, registry, models=models)
    router.refresh()
    assert router.challenger is None and not models.events
    registry.refs["churn@challenger"] = version(2)
    router.refresh()
    assert router.challenger.version == 2
    registry.refs["churn@champion"] = version(2)  # promoted: the canary ends
    router.refresh()
    assert router.challenger is None and router.primary.version == 2
    del registry.refs["churn@challenger"]
    router.refresh()
    assert router.served()["canary"] is None


def test_a_zero_canary_share_follows_no_challenger(config, tokens):
    registry = FakeRegistry(churn_champion=version(1), churn_challenger=version(2))
    router = make_router(config, tokens, registry, canary=0.0)
    router.refresh()
    assert router.challenger is None and router.route("r")[0] == "champion"


def test_a_pinned_version_is_not_followed(config, tokens):
    assert not make_router(config, tokens, FakeRegistry(churn_1=version(1)), ref="churn@1").follows
    assert make_router(config, tokens).follows


def test_admission_refuses_past_the_limit_with_503_when_the_router_answers_the_champion(config, tokens):
    router = make_router(config, tokens, local=FakeLocal(), ongoing=2, queued=1)
    assert router.admission.limit == 3
    with router.admitted(), router.admitted(), router.admitted():
        with pytest.raises(ServiceUnavailable, match="at capacity \\(3 requests in flight"):
            with router.admitted():
                pass
    with router.admitted():  # freed again, errors included
        pass
    with pytest.raises(RuntimeError), router.admitted():
        raise RuntimeError("boom")
    assert router.admission.inflight == 0
    unlimited = make_router(config, tokens)  # the champion's deployment sheds its own load
    assert unlimited.admission.limit is None
    with unlimited.admitted(), unlimited.admitted(), unlimited.admitted(), unlimited.admitted():
        pass


def test_server_side_failures_count_against_the_version_and_client_mistakes_do_not(config, tokens):
    models = FakeModels()
    router = make_router(config, tokens, models=models)
    v = router.primary
    for error in (ServiceUnavailable("a replica went away"), RuntimeError("replica bug"), InvalidInput("bad row"),
                  AtCapacity("at capacity; retry with backoff")):
        models.error = error
        with pytest.raises(type(error)):
            asyncio.run(router.answer("champion", v, [{"x": 1.0}]))
    # The lost replica and the crash; not the client's 422, nor back-pressure (busy is not broken: a canary
    # given more traffic than its replicas take must not be rolled back for it).
    assert router.sampler._errors == {1: 2}


def test_answers_are_sampled_with_their_version_and_mirrored_to_the_shadow(config, tokens):
    registry = FakeRegistry(churn_champion=version(1), churn_shadow=version(4))
    models, monitor = FakeModels(), FakeMonitor()
    router = make_router(config, tokens, registry, models=models, monitor=monitor, shadow=1.0)
    router.refresh()
    assert router.shadow.version == 4 and ("warm", "shadow", 4) in models.events
    rows = [{"x": 1.0, "plan": "a"}, {"x": 2.0, "plan": "b"}]
    predictions = asyncio.run(router.answer("champion", router.primary, rows))
    router.answered("r-1", rows, predictions, router.primary)
    router.sampler.flush()
    assert monitor.observed == [(rows, [0.25, 0.25], ["r-1", "r-1"], [1, 1], [1, 1], {})]
    router._shadow.drain()
    assert ("mirror", "shadow", 4) in models.events
    summary = router.served()["shadow"]
    assert summary["version"] == 4 and summary["share"] == 1.0 and summary["mirrored"] == 1


def test_a_multiclass_answers_class_probabilities_reach_the_monitor(config, tokens):
    registry = FakeRegistry(churn_champion=version(1))
    monitor = FakeMonitor()
    router = make_router(config, tokens, registry, models=FakeModels(), monitor=monitor)
    router.refresh()
    answers = [{"label": "cat", "probability": 0.7, "probabilities": [0.7, 0.2, 0.1]},
               {"label": "dog", "probability": 0.6, "probabilities": [0.3, 0.6, 0.1]}]
    router.answered("r-9", [{"x": 1.0, "plan": "a"}, {"x": 2.0, "plan": "b"}], answers, router.primary)
    router.sampler.flush()
    assert monitor.probabilities.tolist() == [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]
    assert monitor.observed[0][3] == ["cat", "dog"]


def test_no_shadow_share_mirrors_nothing_and_no_sample_rate_samples_nothing(config, tokens):
    registry = FakeRegistry(churn_champion=version(1), churn_shadow=version(4))
    models = FakeModels()
    router = make_router(config, tokens, registry, models=models, shadow=0.0, sample_rate=0.0)
    router.refresh()
    assert router.shadow is None and router.sampler is None
    router.answered("r", [{"x": 1.0}], [{"label": 1, "probability": 0.2}], router.primary)  # nothing to do
    assert not models.events


def test_a_monitor_that_fails_is_left_alone_for_a_while(config, tokens):
    now = [100.0]
    monitor = FakeMonitor()
    router = make_router(config, tokens, monitor=monitor, clock=lambda: now[0])
    monitor.fail = ConnectionError("monitor down")
    router.answered("r-1", [{"x": 1.0}], [{"label": 1, "probability": 0.2}], router.primary)
    router.sampler.flush()
    assert router.sampler.counts["send_errors"] == 1
    monitor.fail = None
    router.answered("r-2", [{"x": 1.0}], [{"label": 1, "probability": 0.2}], router.primary)
    router.sampler.flush()  # within the back-off: dropped, the monitor not asked
    assert monitor.observed == []
    now[0] += MONITOR_RETRY_S
    router.answered("r-3", [{"x": 1.0}], [{"label": 1, "probability": 0.2}], router.primary)
    router.sampler.flush()
    assert [o[2] for o in monitor.observed] == [["r-3"]]


def test_feedback_is_relayed_and_an_unreachable_monitor_is_503(config, tokens):
    monitor = FakeMonitor()
    router = make_router(config, tokens, monitor=monitor)
    assert router.feedback([{"request_id": "r", "label": 1}]) == {
        "model": "churn", "accepted": 1, "unknown_request_ids": 0, "invalid": 0, "refused": 0}
    # Over HTTP each label carries its provenance: the token's id, and whether its role may label anyone's requests.
    sent = []
    recording = FakeMonitor()
    recording.feedback = lambda items: sent.extend(items) or {"outcomes": ["matched"] * len(items)}
    relaying = make_router(config, tokens, monitor=recording)
    app = tokens.verify(f"Bearer {tokens.create('feedback')}")
    labeller = tokens.verify(f"Bearer {tokens.create('labeller')}")
    relaying.feedback([{"request_id": "r", "label": 1}], app)
    relaying.feedback([{"request_id": "r", "label": 1}], labeller)
    assert [(i["by"], i["trusted"]) for i in sent] == [(app.token_id, False), (labeller.token_id, True)]
    monitor.fail = ConnectionError("gone")
    with pytest.raises(ServiceUnavailable, match="monitor for 'churn' is not available \\(ConnectionError\\)"):
        router.feedback([{"request_id": "r", "label": 1}])


def test_features_for_entity_ids_come_from_the_view_the_version_was_trained_from(config, tokens):
    features = FakeFeatures({"a": {"x": 1.0, "plan": "p", "extra": 9}, "b": {"x": 2.0}})
    registry = FakeRegistry(churn_champion=version(1, view="customers"))
    router = make_router(config, tokens, registry, features=features)
    assert router.feature_view == "customers"
    v = router.primary
    assert router.features_for(v, ["a", "b"]) == [{"x": 1.0, "plan": "p"}, {"x": 2.0, "plan": None}]
    assert features.calls == [("customers", ["a", "b"])]  # one call for all the entities
    with pytest.raises(InvalidInput, match="no current features in view 'customers' for entity id\\(s\\) \\['zz'\\]"):
        router.features_for(v, ["a", "zz"])
    for bad, match in (([], "1 to 10000"), (["a"] * 10_001, "1 to 10000"), ([None], "strings or numbers"),
                       ([{"id": 1}], "strings or numbers")):
        with pytest.raises(InvalidInput, match=match):
            router.features_for(v, bad)
    with pytest.raises(InvalidInput, match="not trained from a feature view"):
        router.features_for(version(2), ["a"])


def test_served_says_what_answers(config, tokens):
    registry = FakeRegistry(churn_champion=version(1, view="customers"), churn_challenger=version(2))
    router = make_router(config, tokens, registry, canary=0.25, shadow=0.5)
    router.refresh()
    served = router.served()
    assert served == {
        "model": "churn", "version": 1, "ref": "churn@champion", "feature_view": "customers",
        "deployments": {r: f"ModelVersions ({r})" for r in ("champion", "challenger", "shadow")},
        "canary": {"version": 2, "share": 0.25}, "shadow": None}
