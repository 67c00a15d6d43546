"""The inference path without Ray: transforms, the Predictor, and the Serve config file."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastapi import Request

from aiinfra.data.synthetic import CATEGORICAL, LABEL, NUMERIC, make_customers
from aiinfra.data.transforms import FeaturePipeline, fit_features, load_feature_spec
from aiinfra.demo.configs import example_config
from aiinfra.errors import InvalidInput, NotFound
from aiinfra.inference.predictor import Predictor
from aiinfra.registry.types import ModelVersion
from aiinfra.storage import FileDigest
from aiinfra.training.model_dir import ModelSpec, load_model_dir, save_model_dir
from aiinfra.training.models import build_model
from aiinfra.training.tabular import predict_scores, signature_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data():
    return make_customers(2_000, seed=1)


@pytest.fixture(scope="module")
def pre(data):
    return fit_features(data, load_feature_spec(example_config("customers_features.yaml")))


@pytest.fixture
def predictor(tmp_path, pre):
    torch.manual_seed(0)
    spec = ModelSpec(family="tabular_mlp", params={"hidden": [8]}, input_dim=pre.output_dim, output_dim=1)
    save_model_dir(tmp_path / "m", spec, build_model(spec.family, spec.input_dim, 1, spec.params).state_dict(), pre)
    version = ModelVersion(
        name="churn", version=3, status="active", created_at=0.0, created_by="t", artifact_uri="x",
        files={"weights.safetensors": FileDigest("0" * 64, 1)}, signature=signature_for(pre),
    )
    return Predictor(version, tmp_path / "m")


def test_synthetic_data_is_seeded_and_has_signal(data):
    again = make_customers(2_000, seed=1)
    assert data.equals(again)
    assert set(data.columns) >= {"customer_id", "event_ts", *NUMERIC, *CATEGORICAL, LABEL}
    assert data.groupby("plan")[LABEL].mean()["basic"] > data.groupby("plan")[LABEL].mean()["premium"]


def test_transform_batch_equals_row_by_row(data, pre):
    rows = data[NUMERIC + CATEGORICAL].head(50).to_dict("records")
    batch = pre.transform(data.head(50))
    one_by_one = np.vstack([pre.transform_rows([r]) for r in rows])
    np.testing.assert_array_equal(batch, one_by_one)
    assert FeaturePipeline.from_json(pre.to_json()) == pre  # stored as JSON, round-trips exactly


def test_unknown_category_goes_to_its_bucket(pre):
    x = pre.transform_rows([{"tenure_months": 1, "monthly_charges": 50, "support_calls": 0, "plan": "gold", "region": "north"}])
    names = pre.output_names
    assert x[0, names.index("plan=__unknown__")] == 1.0
    assert x[0, [i for i, n in enumerate(names) if n.startswith("plan=") and "unknown" not in n]].sum() == 0


def test_predictor_answers_with_labels_and_probabilities(predictor, data):
    rows = data[NUMERIC + CATEGORICAL].head(4).to_dict("records")
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]
    out = predictor.predict(rows)
    assert len(out) == 4 and all(0.0 <= p["probability"] <= 1.0 and p["label"] in (0, 1) for p in out)


@pytest.mark.parametrize(
    "instances,needle",
    [
        ([], "non-empty"),
        ({"a": 1}, "non-empty list"),
        (["row"], "instances[0]: must be an object"),
        ([{"tenure_months": "long", "monthly_charges": 1, "support_calls": 1, "plan": "basic", "region": "n"}], "tenure_months: must be a number"),
        ([{"tenure_months": 1, "monthly_charges": float("nan"), "support_calls": 1, "plan": "basic", "region": "n"}], "monthly_charges: must be finite"),
        ([{"tenure_months": 1, "monthly_charges": 1, "support_calls": 1.5, "plan": "basic", "region": "n"}], "support_calls: must be an integer"),
        ([{"tenure_months": 1, "monthly_charges": 1, "support_calls": 1, "plan": 3, "region": "n"}], "plan: must be a string"),
        ([{"monthly_charges": 1, "support_calls": 1, "plan": "basic", "region": "n"}], "tenure_months: missing"),
        ([{"tenure_months": True, "monthly_charges": 1, "support_calls": 1, "plan": "basic", "region": "n", "x": 1}], "x: unknown field"),
    ],
)
def test_predictor_names_each_bad_field(predictor, instances, needle):
    with pytest.raises(InvalidInput) as exc:
        predictor.predict(instances)
    assert needle in str(exc.value)


def test_rows_given_column_by_column_get_the_same_answers_and_the_same_errors(predictor, data):
    """An OIP request's tensors reach the predictor as Columns: checked and transformed a column at a time,
    with the row path's answers, and the row path's error naming the row wherever a column does not fit."""
    from aiinfra.inference.columns import Columns, to_columns

    rows = data[NUMERIC + CATEGORICAL].head(50).to_dict("records")
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]
    columns = Columns({k: [r[k] for r in rows] for k in rows[0]})
    assert predictor.predict(columns) == predictor.predict(rows)
    assert predictor.predict(to_columns(rows)[:3]) == predictor.predict(rows[:3])
    for name, value, needle in (("monthly_charges", float("nan"), "instances[7].monthly_charges: must be finite"),
                                ("support_calls", 1.5, "instances[7].support_calls: must be an integer"),
                                ("support_calls", True, "instances[7].support_calls: must be an integer"),
                                ("plan", 3, "instances[7].plan: must be a string"),
                                ("tenure_months", 10**400, "instances[7].tenure_months: is out of range")):
        bad = {k: list(v) for k, v in columns.columns.items()}
        bad[name][7] = value
        with pytest.raises(InvalidInput, match=re.escape(needle)):
            predictor.predict(Columns(bad))
    without = {k: v for k, v in columns.columns.items() if k != "tenure_months"}
    with pytest.raises(InvalidInput, match=re.escape("instances[0].tenure_months: missing")):
        predictor.predict(Columns(without))


def test_model_dir_round_trip_and_evaluation(tmp_path, pre, data):
    spec = ModelSpec(family="tabular_mlp", input_dim=pre.output_dim, output_dim=1)
    model = build_model(spec.family, spec.input_dim, 1)
    save_model_dir(tmp_path / "m", spec, model.state_dict(), pre)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "preprocess.json", "weights.safetensors"]
    spec2, loaded, pre2 = load_model_dir(tmp_path / "m")
    model2 = loaded.module
    assert spec2 == spec and pre2 == pre
    x = torch.from_numpy(pre.transform(data.head(3)))
    torch.testing.assert_close(model.eval()(x), model2(x))
    from aiinfra.training.evaluation import evaluate_predictions

    report = evaluate_predictions("binary", data[LABEL].to_numpy(), predict_scores(model2, spec2, pre2.transform(data)))
    assert {"accuracy", "roc_auc", "log_loss", "ece", "f1"} <= set(report.metrics)
    with pytest.raises(InvalidInput, match="unknown model family"):
        build_model("transformer-xxl", 3, 1)


def test_serve_config_is_valid_for_ray_serve():
    from ray.serve.schema import ServeDeploySchema

    for path in sorted((ROOT / "serve_configs").glob("*.yaml")):
        schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
        for app in schema.applications:
            module, _, attr = app.import_path.partition(":")
            imported = __import__(module, fromlist=[attr])
            assert callable(getattr(imported, attr)), f"{path.name}: {app.import_path} is not importable"


def test_the_app_builder_applies_replicas_autoscaling_and_back_pressure_from_the_config(tmp_path):
    from aiinfra.config import load_config
    from aiinfra.serving.app import build_app

    base = load_config(environ={}, home=str(tmp_path))

    def deployment_config(role="champion", **serve):
        """The config of the router (role None) or of a model deployment in the app's graph."""
        cfg = base.model_copy(update={"serve": base.serve.model_copy(update={"champion_in_router": False, **serve})})
        router = build_app(cfg, "churn@champion")._bound_deployment
        if role is None:
            return router._deployment_config
        models = {a._bound_deployment.name: a._bound_deployment for a in router.init_args[2:]}
        assert set(models) == {"champion", "challenger", "shadow"}  # one deployment per served role
        return models[role]._deployment_config

    fixed = deployment_config(min_replicas=2, max_replicas=2, max_queued_requests=7)
    assert fixed.num_replicas == 2 and fixed.autoscaling_config is None and fixed.max_queued_requests == 7
    assert deployment_config("challenger", min_replicas=2, max_replicas=2).num_replicas == 1
    assert deployment_config(None, max_queued_requests=7).max_queued_requests == 28  # the router queues deeper
    scaled = deployment_config(min_replicas=1, max_replicas=4, target_ongoing_requests=3)
    assert scaled.autoscaling_config.max_replicas == 4 and scaled.autoscaling_config.target_ongoing_requests == 3
    with pytest.raises(InvalidInput, match="max_replicas"):
        deployment_config(min_replicas=3, max_replicas=2)
    # the default: the champion answers in the router, whose replicas then scale; no champion deployment
    router = build_app(base.model_copy(update={"serve": base.serve.model_copy(update={"min_replicas": 1, "max_replicas": 3})}),
                       "churn@champion")._bound_deployment
    assert base.serve.champion_in_router and router.init_args[2] is None
    assert {a._bound_deployment.name for a in router.init_args[3:]} == {"challenger", "shadow"}
    assert router._deployment_config.autoscaling_config.max_replicas == 3
    # it sheds past the model's limits itself (a JSON 503); Serve's own limit on it sits above that
    assert router._deployment_config.max_ongoing_requests == base.serve.max_ongoing_requests + base.serve.max_queued_requests + 64


def test_the_metrics_middleware_records_route_status_version_and_rows(monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import aiinfra.serving.metrics as metrics
    from aiinfra.serving.http import Measure

    seen = []
    monkeypatch.setattr(metrics, "record_request", lambda **kw: seen.append(kw))
    app = FastAPI()
    app.add_middleware(Measure)

    @app.post("/predict/{name}")
    def predict(name: str, request: Request):  # Request from the module: FastAPI resolves the annotation there
        if name != "unserved":  # as the routes do once the name is found served (ModelServer._served)
            request.state.model = name
        request.state.version, request.state.rows = 3, 2
        return {"ok": True}

    @app.get("/v2/health/live")
    def live():
        return {"live": True}

    client = TestClient(app)
    assert client.post("/predict/churn").status_code == 200
    assert client.get("/v2/health/live").status_code == 200  # health checks are not counted
    assert client.post("/predict/caf\u00e9").status_code == 200  # a name no metric tag may hold
    assert client.post("/predict/unserved").status_code == 200  # a name no route found served: not a tag
    assert [(s["model"], s["version"], s["route"], s["status"], s["rows"]) for s in seen] == [
        ("churn", "3", "/predict/{name}", 200, 2), ("(unknown)", "3", "/predict/{name}", 200, 2),
        ("(unknown)", "3", "/predict/{name}", 200, 2)]
    assert all(s["latency_ms"] >= 0 for s in seen)


@pytest.mark.parametrize("with_nulls", [False, True])
def test_a_bool_column_is_a_bool_input_end_to_end(tmp_path, with_nulls):
    """A bool training column becomes a BOOL input (OIP and /predict take true/false), not FP64."""
    from aiinfra.data.transforms import FeatureSpec
    from aiinfra.serving.oip import decode_infer_request, tensor_metadata

    rng = np.random.default_rng(0)
    flags = rng.random(300) < 0.5
    frame = pd.DataFrame({"x": rng.normal(size=300), "is_premium": flags})
    if with_nulls:  # pyarrow gives pandas a nullable bool column as object
        frame["is_premium"] = pd.Series([None if i % 10 == 0 else bool(f) for i, f in enumerate(flags)], dtype=object)
    spec = FeatureSpec.model_validate({"features": [
        {"column": "x", "steps": [{"op": "standardize"}]},
        {"column": "is_premium", "steps": [{"op": "impute", "strategy": "median"}]}]})
    pre = fit_features(frame, spec)
    signature = signature_for(pre)
    field = next(f for f in signature.inputs if f.name == "is_premium")
    assert field.dtype == "bool" and tensor_metadata(field)["datatype"] == "BOOL"
    model_spec = ModelSpec(family="tabular_mlp", params={"hidden": [4]}, input_dim=pre.output_dim, output_dim=1)
    save_model_dir(tmp_path / "m", model_spec, build_model("tabular_mlp", pre.output_dim, 1, model_spec.params).state_dict(), pre)
    version = ModelVersion(name="b", version=1, status="active", created_at=0.0, created_by="t", artifact_uri="x",
                           files={"weights.safetensors": FileDigest("0" * 64, 1)}, signature=signature)
    predictor = Predictor(version, tmp_path / "m")
    rows, _, _ = decode_infer_request({"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [2], "data": [0.5, -1.0]},
        {"name": "is_premium", "datatype": "BOOL", "shape": [2], "data": [True, False]}]}, signature)
    assert [r["is_premium"] for r in rows] == [True, False]
    assert len(predictor.predict(rows)) == 2
    # the flag reaches the model: true and false give different features
    both = pre.transform_rows([{"x": 0.0, "is_premium": True}, {"x": 0.0, "is_premium": False}])
    assert not np.array_equal(both[0], both[1])
    with pytest.raises(InvalidInput, match="is_premium: must be true or false"):
        predictor.predict([{"x": 0.0, "is_premium": 1.0}])


def test_loaded_versions_load_on_first_use_and_keep_the_two_most_recent(tmp_path, pre, predictor):
    """What both the router (champion_in_router) and a ModelVersions replica hold while aliases move."""
    from aiinfra.config import load_config
    from aiinfra.inference.versions import LoadedVersions
    from aiinfra.platform import open_local

    with open_local(load_config(environ={}, home=str(tmp_path / "home"))) as p:
        for _ in range(3):
            p.registry.register("churn", tmp_path / "m", signature=signature_for(pre))
        versions = LoadedVersions(p.registry, "churn")
        assert versions.loaded(1) is None  # nothing until asked
        first = versions.get(1)
        assert versions.get(1) is first and versions.loaded(1) is first
        versions.get(2)
        versions.get(1)  # 1 is now the most recently used
        versions.get(3)
        assert versions.versions == [1, 3]  # 2 went: the least recently used of three
        row = {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}
        assert versions.get(3).predict([row]) == first.predict([row])  # same files, same answers
        with pytest.raises(NotFound):
            versions.get(9)


def test_loaded_models_keep_the_most_recent_versions_over_all_models_of_an_endpoint(tmp_path, pre, predictor,
                                                                                   monkeypatch):
    """One bound for a many-model endpoint's long tail: the least recently *used* version goes, whichever model it is
    of, and a version evicted is loaded again (same files, same answers) when next asked."""
    from aiinfra.config import load_config
    from aiinfra.inference.versions import LoadedModels
    from aiinfra.platform import open_local

    with open_local(load_config(environ={}, home=str(tmp_path / "home"))) as p:
        for name in ("a", "b", "c"):
            p.registry.register(name, tmp_path / "m", signature=signature_for(pre))
        p.registry.register("a", tmp_path / "m", signature=signature_for(pre))  # a@2
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        models = LoadedModels(p.registry, keep=3)
        a, b = models.of("a"), models.of("b")
        first = a.get(1)
        b.get(1)
        a.get(2)
        assert models.keys == [("a", 1), ("b", 1), ("a", 2)] and a.versions == [1, 2] and b.versions == [1]
        assert a.loaded(1) is first  # a hit on the request path is a use: a@1 is now the most recent
        models.get("c", 1)  # past the bound: b@1, used least recently, goes (not a@1, loaded first)
        assert models.keys == [("a", 2), ("a", 1), ("c", 1)] and b.loaded(1) is None
        row = {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}
        assert b.get(1).predict([row]) == first.predict([row])  # loaded again on demand
        assert len(models.keys) == 3
        assert list(scratch.iterdir()) == []  # each load's download is gone once loaded: misses never fill the disk
        with pytest.raises(NotFound):
            models.get("nope", 1)
        with pytest.raises(ValueError, match="keep"):
            LoadedModels(p.registry, keep=0)


def test_served_models_are_added_replaced_and_removed_by_name_per_app(tmp_path):
    from aiinfra.serving.endpoint import ServedModels
    from aiinfra.storage import open_metadata_db

    db = open_metadata_db(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        check_served_models(ServedModels(db))
    finally:
        db.close()


def check_served_models(added) -> None:
    """What ServedModels does on any metadata DB (the Postgres twin: tests/integration/test_metadata_on_postgres.py)."""
    assert added.of("aiinfra") == {}
    assert added.add("aiinfra", "churn@champion", who="alice") == "churn"
    added.add("aiinfra", "fraud@3")
    added.add("other", "churn@1")  # another app's models are its own
    assert added.of("aiinfra") == {"churn": "churn@champion", "fraud": "fraud@3"}
    added.add("aiinfra", "churn@2")  # the same name: replaced, not a second row
    assert added.of("aiinfra") == {"churn": "churn@2", "fraud": "fraud@3"}
    assert added.db.query("SELECT added_by FROM served_models WHERE app = 'aiinfra' AND name = 'churn'")[0]["added_by"] \
        == "unknown"
    assert added.remove("aiinfra", "fraud") == "fraud@3"
    assert added.of("aiinfra") == {"churn": "churn@2"}
    with pytest.raises(NotFound, match="'fraud' was not added to the Serve app 'aiinfra'"):
        added.remove("aiinfra", "fraud")
    with pytest.raises(InvalidInput):
        added.add("aiinfra", "no spaces allowed@1")
    assert added.clear("aiinfra") == 1 and added.of("aiinfra") == {} and added.of("other") == {"churn": "churn@1"}


def test_an_endpoint_is_built_for_several_models_and_serve_configs_name_them(tmp_path, monkeypatch):
    from aiinfra.config import load_config
    from aiinfra.serving.app import app_builder, build_app

    cfg = load_config(environ={}, home=str(tmp_path))
    ingress = build_app(cfg, ["churn@champion", "fraud@3"])._bound_deployment
    assert ingress.init_args[1] == ("churn@champion", "fraud@3")
    assert build_app(cfg, "churn@champion")._bound_deployment.init_args[1] == ("churn@champion",)
    assert build_app(cfg)._bound_deployment.init_args[1] == ()  # only what `serve deploy` adds later
    with pytest.raises(InvalidInput, match=r"\['churn'\] named more than once"):
        build_app(cfg, ["churn@champion", "churn@2"])
    with pytest.raises(InvalidInput):
        build_app(cfg, ["churn@champion", "bad name"])
    monkeypatch.setenv("AIINFRA_HOME", str(tmp_path))
    assert app_builder({"models": ["a@1", "b@champion"]})._bound_deployment.init_args[1] == ("a@1", "b@champion")
    assert app_builder({"model": "a@1"})._bound_deployment.init_args[1] == ("a@1",)
    assert app_builder({"models": []})._bound_deployment.init_args[1] == ()
    for bad in ({}, {"model": "a@1", "models": ["b@1"]}, {"models": "a@1"}, {"models": [1]}):
        with pytest.raises(InvalidInput, match="model"):
            app_builder(bad)


def test_model_gpus_go_to_the_model_deployments_and_need_the_champion_out_of_the_router(tmp_path):
    from aiinfra.config import load_config
    from aiinfra.serving.app import build_app

    base = load_config(environ={}, home=str(tmp_path))
    gpu = base.model_copy(update={"serve": base.serve.model_copy(update={"model_gpus": 0.5, "champion_in_router": False})})
    router = build_app(gpu, "churn@champion")._bound_deployment
    models = {a._bound_deployment.name: a._bound_deployment for a in router.init_args[2:]}
    assert {n: d.ray_actor_options["num_gpus"] for n, d in models.items()} == {"champion": 0.5, "challenger": 0.5, "shadow": 0.5}
    assert "num_gpus" not in router.ray_actor_options  # the router stays on CPU
    assert models["champion"].ray_actor_options["runtime_env"]["env_vars"]  # the replica flags are kept
    in_router = base.model_copy(update={"serve": base.serve.model_copy(update={"model_gpus": 1.0})})
    with pytest.raises(InvalidInput, match="champion_in_router: false"):
        build_app(in_router, "churn@champion")


def test_a_cuda_predictor_without_cuda_says_so(predictor, tmp_path, pre):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: test_a_cuda_predictor_answers_as_the_cpu_one covers it")
    from aiinfra.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="no CUDA device"):
        Predictor(predictor.version, tmp_path / "m", device="cuda")


def test_a_cuda_predictor_answers_as_the_cpu_one(predictor, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    on_gpu = Predictor(predictor.version, tmp_path / "m", device="cuda")
    assert next(on_gpu.model.module.parameters()).is_cuda
    row = {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"}
    cpu, gpu = predictor.predict([row] * 3), on_gpu.predict([row] * 3)
    assert [p["label"] for p in gpu] == [p["label"] for p in cpu]
    assert all(abs(a["probability"] - b["probability"]) < 1e-5 for a, b in zip(cpu, gpu))
