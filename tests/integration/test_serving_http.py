"""The Serve app over real HTTP: fuzzing its OpenAPI document, bad bodies, back-pressure, OIP v2 round trip.

Runs in the session's shared Ray (tests/integration/conftest.py). One module fixture registers a small
tabular model (untrained, seeded: these tests check the HTTP contract, not accuracy) and deploys two
Serve apps on a free port: the model as `build_app` makes it, and the same model with tiny
back-pressure limits under `/bp`. Both are deleted and Serve is shut down at the end.

The contract (README.md, the HTTP API): errors are JSON `{"error": message}`; 401/403 auth, 404 unknown model,
413 body too large, 422 invalid input, 503 overloaded; never a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)

MODEL = "httpcheck"
BP = "/bp"  # route prefix of the back-pressure app
ROW = {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north",
       "autopay": False}
CALM = {"tenure_months": 60.0, "monthly_charges": 30.0, "support_calls": 0, "plan": "premium", "region": "north",
        "autopay": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_dir(path: Path):
    """A small churn model with one boolean input (`autopay`: `fit_features` makes it a `bool` input,
    OIP datatype BOOL), and its signature."""
    import numpy as np
    import torch

    from aiinfra.data.synthetic import make_customers
    from aiinfra.data.transforms import fit_features, load_feature_spec
    from aiinfra.demo.configs import example_config
    from aiinfra.training.model_dir import ModelSpec, save_model_dir
    from aiinfra.training.models import build_model
    from aiinfra.training.tabular import signature_for

    df = make_customers(600, seed=2)
    df["autopay"] = np.random.default_rng(2).random(len(df)) < 0.4
    spec = load_feature_spec(example_config("customers_features.yaml")).model_dump(mode="json")
    spec["features"].append({"column": "autopay", "steps": [{"op": "clip", "min": 0, "max": 1}]})
    pre = fit_features(df, load_feature_spec(spec))
    torch.manual_seed(0)
    mspec = ModelSpec(family="tabular_mlp", params={"hidden": [8]}, input_dim=pre.output_dim, output_dim=1)
    save_model_dir(path, mspec, build_model(mspec.family, mspec.input_dim, 1, mspec.params).state_dict(), pre)
    sig = signature_for(pre)
    assert next(f for f in sig.inputs if f.name == "autopay").dtype == "bool"
    return sig


@pytest.fixture(scope="module")
def served(platform, platform_config, tmp_path_factory):
    from ray import serve

    from aiinfra.identity.tokens import TokenStore
    from aiinfra.serving.app import build_app
    from aiinfra.storage import open_metadata_db

    model_dir = tmp_path_factory.mktemp("httpcheck") / "m"
    version = platform.registry.register(MODEL, model_dir, signature=_model_dir(model_dir))
    db = open_metadata_db(platform_config.metadata_url)
    tokens = TokenStore(db)
    predict_token, labeller_token = tokens.create("predict", who="test"), tokens.create("labeller", who="test")
    db.close()

    port, grpc_port = _free_port(), _free_port()
    # Monitoring off: a sampled request would start a `monitor:` actor for nothing.
    cfg = platform_config.model_copy(update={
        # The champion in its own model deployment (batching, back-pressure from its queue limits); the
        # default, the champion answered in the router, has its own test at the end.
        "serve": platform_config.serve.model_copy(update={"port": port, "grpc_port": grpc_port, "champion_in_router": False}),
        "monitoring": platform_config.monitoring.model_copy(update={"enabled": False}),
    })
    # The back-pressure app also has FastAPI's docs routes on (serve.docs); the main app keeps the default, off.
    tight = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"max_ongoing_requests": 1, "max_queued_requests": 1,
                                                                         "docs": True})})
    from aiinfra.serving.grpc_oip import start_options

    serve.start(**start_options(cfg))  # HTTP, and the OIP gRPC service on grpc_port
    ref = f"{MODEL}@{version.version}"
    try:
        serve.run(build_app(cfg, ref), name="httpcheck", route_prefix="/")
        serve.run(build_app(tight, ref), name="httpcheck-bp", route_prefix=BP)
        yield {"base": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}", "version": version.version, "config": cfg,
               "auth": {"Authorization": f"Bearer {predict_token}"},
               "labeller_only": {"Authorization": f"Bearer {labeller_token}"}}
    finally:
        for app in ("httpcheck", "httpcheck-bp"):
            try:
                serve.delete(app)
            except Exception:  # noqa: BLE001 - best effort; shutdown below removes the rest
                pass
        serve.shutdown()


def _assert_error_json(r: httpx.Response | object, what: object) -> None:
    body = r.json() if isinstance(r, httpx.Response) else json.loads(r.text)  # type: ignore[attr-defined]
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (what, r.status_code, r.text[:300])


# -- a. the OpenAPI document, fuzzed ------------------------------------------------------------------

def test_openapi_fuzz_gives_no_5xx_and_json_errors(served):
    """Every operation of the app's OpenAPI document (built in-process: the live app serves none by default),
    against the live app, with a valid token and without, twice: path values from all of Unicode, then ASCII
    only (most Unicode names hit the known non-ASCII 500 before anything else)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    from aiinfra.serving.app import api  # the ingress's routes are on it once app.py is imported

    seen: list[tuple[str, int]] = []

    def fuzz(client: httpx.Client, op, headers: dict[str, str]):
        @settings(max_examples=10, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            r = client.request(case.method, case.formatted_path, headers={**(case.headers or {}), **headers})
            seen.append((op.label, r.status_code))
            assert r.status_code < 500, (op.label, case.formatted_path, r.status_code, r.text[:300])
            if r.status_code >= 400:
                _assert_error_json(r, (op.label, case.formatted_path))

        return check

    with httpx.Client(base_url=served["base"], timeout=30) as client:
        for codec in ("utf-8", "ascii"):
            schema = schemathesis.openapi.from_dict(api.openapi())
            schema.config.generation.update(codec=codec)
            operations = [r.ok() for r in schema.get_all_operations()]
            labels = {op.label for op in operations}
            assert {"POST /predict/{name}", "POST /v2/models/{name}/infer", "GET /v2/models/{name}",
                    "GET /v2/models/{name}/ready", "POST /feedback/{name}", "GET /v2/health/live"} <= labels, labels
            for op in operations:
                for headers in (served["auth"], {}):
                    fuzz(client, op, headers)()
    assert len(seen) > 80, len(seen)
    codes = {code for label, code in seen if "health" not in label and label != "POST /feedback/{name}"}
    assert codes == {401, 404}, seen  # every made-up name: no token 401, else 404
    # a predict token may not label (the role is checked before the name): 403, without a token 401
    assert {code for label, code in seen if label == "POST /feedback/{name}"} == {401, 403}, seen


@pytest.mark.parametrize("method,path", [("GET", "/no/such/route"), ("GET", "/predict/httpcheck"),
                                         ("POST", "/v2/models/a%2Fb/infer")])
def test_unmatched_paths_answer_the_error_json_shape(served, method, path):
    r = httpx.request(method, served["base"] + path, headers=served["auth"], timeout=30)
    assert r.status_code in (404, 405)
    _assert_error_json(r, path)


@pytest.mark.parametrize("method,path", [("GET", "/v2/models/caf%C3%A9"), ("GET", "/v2/models/%C2%80/ready"),
                                         ("POST", "/predict/%E4%BD%A0%E5%A5%BD"), ("POST", "/v2/models/%C3%A9/infer")])
@pytest.mark.parametrize("authorized", [True, False], ids=["token", "no-token"])
def test_a_non_ascii_model_name_is_404_not_500(served, method, path, authorized):
    r = httpx.request(method, served["base"] + path, content=_row() if method == "POST" else None,
                      headers=served["auth"] if authorized else {}, timeout=30)
    assert r.status_code in (401, 404), r.text[:300]
    _assert_error_json(r, path)


# -- a. hand-made bad bodies --------------------------------------------------------------------------

def _infer(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _t(name, datatype, data, shape=None):
    return {"name": name, "datatype": datatype, "shape": shape if shape is not None else [len(data)], "data": data}


GOOD_TENSORS = [_t("tenure_months", "FP32", [2.0]), _t("monthly_charges", "FP64", [150.0]),
                _t("support_calls", "INT64", [6]), _t("plan", "BYTES", ["basic"]), _t("region", "BYTES", ["north"]),
                _t("autopay", "BOOL", [False])]


def _swap(name, tensor):
    return [tensor if t["name"] == name else t for t in GOOD_TENSORS]


def _row(**changes):
    return json.dumps({"instances": [{**ROW, **changes}]}).encode()


PREDICT = f"/predict/{MODEL}"
INFER = f"/v2/models/{MODEL}/infer"
BAD_BODIES = [
    # (id, path, body bytes, status, a word the error names)
    ("not-json", PREDICT, b"{not json", 422, "JSON"),
    ("empty", PREDICT, b"", 422, "JSON"),
    ("utf16-bom-garbage", PREDICT, b"\xff\xfe\xff", 422, "JSON"),
    ("list-body", PREDICT, b"[]", 422, "predict request"),
    ("null-body", PREDICT, b"null", 422, "predict request"),
    ("string-body", PREDICT, b'"instances"', 422, "predict request"),
    ("instances-not-list", PREDICT, b'{"instances": "x"}', 422, "instances"),
    ("instances-empty", PREDICT, b'{"instances": []}', 422, "non-empty"),
    ("row-not-object", PREDICT, b'{"instances": [1]}', 422, "instances[0]"),
    ("row-empty", PREDICT, b'{"instances": [{}]}', 422, "missing"),
    ("wrong-type-number", PREDICT, _row(tenure_months="long"), 422, "tenure_months"),
    ("wrong-type-bool-as-number", PREDICT, _row(monthly_charges=True), 422, "monthly_charges"),
    ("wrong-type-int", PREDICT, _row(support_calls=1.5), 422, "support_calls"),
    ("wrong-type-string", PREDICT, _row(plan=3), 422, "plan"),
    ("wrong-type-bool", PREDICT, _row(autopay="yes"), 422, "autopay"),
    ("null-value", PREDICT, _row(region=None), 422, "region"),
    ("missing-field", PREDICT, json.dumps({"instances": [{k: v for k, v in ROW.items() if k != "plan"}]}).encode(), 422, "plan"),
    ("extra-field", PREDICT, _row(favourite_colour="red"), 422, "favourite_colour"),
    ("extra-top-level", PREDICT, json.dumps({"instances": [ROW], "rows": 1}).encode(), 422, "rows"),
    ("nan", PREDICT, _row(tenure_months=math.nan), 422, "finite"),
    ("infinity", PREDICT, _row(monthly_charges=-math.inf), 422, "finite"),
    ("float-overflow-literal", PREDICT, _row(tenure_months=0.5).replace(b"0.5", b"1e999"), 422, "finite"),
    ("too-many-rows", PREDICT, b'{"instances": [' + b"{}," * 10_000 + b"{}]}", 422, "10000"),
    ("both-instances-and-ids", PREDICT, json.dumps({"instances": [ROW], "entity_ids": [1]}).encode(), 422, "exactly one"),
    ("entity-ids-without-feature-view", PREDICT, b'{"entity_ids": [1]}', 422, "feature view"),
    ("too-large", PREDICT, b'{"instances": [' + b'{"tenure_months": 1.0},' * 60_000 + b"{}]}", 413, "limit"),
    ("unknown-model", "/predict/nope", _row(), 404, "nope"),
    ("unknown-model-infer", "/v2/models/nope/infer", _infer(GOOD_TENSORS), 404, "nope"),
    ("infer-not-json", INFER, b"{", 422, "JSON"),
    ("infer-list", INFER, b"[]", 422, "inputs"),
    ("infer-no-inputs", INFER, b"{}", 422, "inputs"),
    ("infer-empty-inputs", INFER, _infer([]), 422, "inputs"),
    ("infer-extra-key", INFER, _infer(GOOD_TENSORS, tensors=[]), 422, "tensors"),
    ("infer-tensor-not-object", INFER, _infer([1]), 422, "inputs[0]"),
    ("infer-unknown-input", INFER, _infer([*GOOD_TENSORS, _t("shoe_size", "FP32", [1.0])]), 422, "shoe_size"),
    ("infer-duplicate-input", INFER, _infer([*GOOD_TENSORS, GOOD_TENSORS[0]]), 422, "twice"),
    ("infer-missing-input", INFER, _infer(GOOD_TENSORS[:-1]), 422, "autopay"),
    ("infer-fp32-for-bytes", INFER, _infer(_swap("plan", _t("plan", "FP32", [1.0]))), 422, "plan"),
    ("infer-bool-for-float", INFER, _infer(_swap("tenure_months", _t("tenure_months", "BOOL", [True]))), 422, "tenure_months"),
    ("infer-fp64-for-int", INFER, _infer(_swap("support_calls", _t("support_calls", "FP64", [6.0]))), 422, "support_calls"),
    ("infer-int64-for-bool", INFER, _infer(_swap("autopay", _t("autopay", "INT64", [1]))), 422, "autopay"),
    ("infer-unknown-datatype", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP128", [2.0]))), 422, "FP128"),
    ("infer-shape-count-mismatch", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP32", [2.0], [2]))), 422, "shape"),
    ("infer-shape-2d", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP32", [2.0, 3.0], [1, 2]))), 422, "shape"),
    ("infer-shape-negative", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP32", [2.0], [-1]))), 422, "shape"),
    ("infer-shape-not-list", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP32", [2.0], "1"))), 422, "shape"),
    ("infer-shape-bool", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP32", [2.0], [True]))), 422, "shape"),
    ("infer-rows-differ", INFER, _infer(_swap("plan", _t("plan", "BYTES", ["basic", "basic"]))), 422, "rows"),
    ("infer-data-not-list", INFER, _infer(_swap("plan", {"name": "plan", "datatype": "BYTES", "shape": [1], "data": "basic"})), 422, "data"),
    ("infer-zero-rows", INFER, _infer([{**t, "shape": [0], "data": []} for t in GOOD_TENSORS]), 422, "non-empty"),
    ("infer-nan", INFER, _infer(_swap("monthly_charges", _t("monthly_charges", "FP64", [math.nan]))), 422, "finite"),
    ("infer-int-not-integer", INFER, _infer(_swap("support_calls", _t("support_calls", "INT64", [1.5]))), 422, "support_calls"),
    ("infer-bytes-not-string", INFER, _infer(_swap("plan", _t("plan", "BYTES", [7]))), 422, "plan"),
    ("infer-bool-not-bool", INFER, _infer(_swap("autopay", _t("autopay", "BOOL", ["yes"]))), 422, "autopay"),
    ("infer-outputs-not-list", INFER, _infer(GOOD_TENSORS, outputs="probability"), 422, "outputs"),
    ("infer-unknown-output", INFER, _infer(GOOD_TENSORS, outputs=[{"name": "logits"}]), 422, "logits"),
    ("surrogate-extra-top-level", PREDICT, b'{"instances": [], "\\ud800": 1}', 422, "surrogate"),
    ("infer-too-large", INFER, _infer([_t("plan", "BYTES", ["x" * 1000] * 1100)]), 413, "limit"),
    # issue 13: the OIP id capped as X-Request-ID is; too many rows refused from the shape, before the data is
    # read (the data here does not even match it); integers past Python's 4,300-digit limit; lone surrogates
    # in a UTF-16 or UTF-32 body, escaped or raw.
    ("infer-id-too-long", INFER, _infer(GOOD_TENSORS, id="r" * 201), 422, "at most 200 characters"),
    ("infer-too-many-rows", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP32", [2.0], [10_001]))), 422,
     "at most 10000 rows"),
    ("infer-too-many-rows-2d", INFER, _infer(_swap("tenure_months", _t("tenure_months", "FP32", [2.0], [10**40, 1]))), 422,
     "at most 10000 rows"),
    ("huge-int-predict", PREDICT, _row(support_calls=7).replace(b'"support_calls": 7', b'"support_calls": 1' + b"0" * 5000),
     422, "too long"),
    ("huge-int-infer-id", INFER, _infer(GOOD_TENSORS, id=7).replace(b'"id": 7', b'"id": 1' + b"0" * 5000), 422, "too long"),
    ("utf16-surrogate-escape", PREDICT, '{"instances": [], "\\ud800": 1}'.encode("utf-16"), 422, "surrogate"),
    ("utf32-surrogate-escape", INFER, '{"inputs": [], "\\udfff": 1}'.encode("utf-32"), 422, "surrogate"),
    ("utf16-surrogate-raw", PREDICT, '{"instances": [{"plan": "\ud800"}]}'.encode("utf-16-le", "surrogatepass"), 422, "JSON"),
    ("utf32-surrogate-raw", INFER, json.dumps({"inputs": GOOD_TENSORS, "id": "\ud800"}, ensure_ascii=False).encode("utf-32", "surrogatepass"), 422, "JSON"),
    ("utf8-surrogate-raw", INFER, '{"inputs": [], "id": "\ud800"}'.encode("utf-8", "surrogatepass"), 422, "JSON"),
]


@pytest.mark.parametrize("path,body,status,needle", [pytest.param(*c[1:], id=c[0]) for c in BAD_BODIES])
def test_bad_bodies_get_the_right_4xx_with_a_json_error(served, path, body, status, needle):
    r = httpx.post(served["base"] + path, content=body, headers=served["auth"], timeout=30)
    assert r.status_code == status, r.text[:300]
    _assert_error_json(r, path)
    assert needle in r.json()["error"], r.json()["error"][:300]


def test_a_too_large_body_without_content_length_is_413(served):
    def chunks():
        yield b'{"instances": ['
        for _ in range(60):  # 1.38 MB in all, over the 1 MiB limit
            yield b'{"tenure_months": 1.0},' * 1000
        yield b"{}]}"

    r = httpx.post(served["base"] + PREDICT, content=chunks(), headers=served["auth"], timeout=30)  # chunked
    assert r.status_code == 413, r.text[:300]
    _assert_error_json(r, "chunked")


@pytest.mark.parametrize("headers,status", [
    ({}, 401), ({"Authorization": "Basic dXNlcjpwYXNz"}, 401), ({"Authorization": "Bearer"}, 401),
    ({"Authorization": "Bearer aii_nope"}, 401), ({"Authorization": "Bearer aii_00000000_wrong"}, 401),
])
def test_bad_credentials_on_the_oip_routes_are_401_json(served, headers, status):
    for method, path, body in (("POST", INFER, _infer(GOOD_TENSORS)), ("GET", f"/v2/models/{MODEL}", None)):
        r = httpx.request(method, served["base"] + path, content=body, headers=headers, timeout=30)
        assert r.status_code == status, (path, r.text[:300])
        _assert_error_json(r, path)


def test_a_too_long_request_id_is_422(served):
    r = httpx.post(served["base"] + PREDICT, content=_row(), headers={**served["auth"], "X-Request-ID": "r" * 201}, timeout=30)
    assert r.status_code == 422 and "X-Request-ID" in r.json()["error"]


def _huge_int_body() -> bytes:
    return _row(support_calls=7).replace(b'"support_calls": 7', b'"support_calls": 1' + b"0" * 400)


@pytest.mark.parametrize("path,body", [
    pytest.param(PREDICT, _huge_int_body(), id="predict-int-field"),
    pytest.param(PREDICT, _row(tenure_months=7).replace(b'"tenure_months": 7', b'"tenure_months": 1' + b"0" * 400),
                 id="predict-float-field"),
    pytest.param(INFER, _infer(_swap("support_calls", _t("support_calls", "INT64", [7]))).replace(b"[7]", b"[1" + b"0" * 400 + b"]"),
                 id="infer-int64"),
])
def test_an_integer_beyond_float_range_is_422_not_500(served, path, body):
    r = httpx.post(served["base"] + path, content=body, headers=served["auth"], timeout=30)
    assert r.status_code == 422, r.text[:300]
    _assert_error_json(r, path)


@pytest.mark.parametrize("path", [PREDICT, INFER])
def test_deeply_nested_json_is_422_not_500(served, path):
    r = httpx.post(served["base"] + path, content=b"[" * 100_000 + b"]" * 100_000, headers=served["auth"], timeout=30)
    assert r.status_code == 422, r.text[:300]
    _assert_error_json(r, path)


@pytest.mark.parametrize("path,body,status", [
    pytest.param(PREDICT, b'{"instances": [{"\\ud800": 1}]}', 422, id="predict-unknown-field"),
    pytest.param(INFER, b'{"inputs": [], "\\ud800": 1}', 422, id="infer-extra-key"),
    pytest.param(INFER, _infer(GOOD_TENSORS, id="\ud800"), (200, 422), id="infer-id"),
])
def test_a_lone_surrogate_in_the_body_is_not_a_500(served, path, body, status):
    r = httpx.post(served["base"] + path, content=body, headers=served["auth"], timeout=30)
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), r.text[:300]
    if r.status_code != 200:
        _assert_error_json(r, path)


def test_fuzzed_instance_values_get_200_or_a_json_422(served):
    """Any JSON value in any field (or a missing or extra one): a prediction or a 422 naming it, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                         max_leaves=5)
    row = st.fixed_dictionaries({}, optional={**{k: value | st.just(v) for k, v in ROW.items()}, "extra": value})
    body = st.fixed_dictionaries({"instances": st.lists(row, min_size=0, max_size=3)}) | st.builds(lambda v: {"instances": v}, value)
    statuses: list[int] = []
    with httpx.Client(base_url=served["base"], headers=served["auth"], timeout=30) as client:

        @settings(max_examples=80, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=body)
        def check(body):
            # allow_nan: Python's json writes NaN/Infinity, which json.loads on the server accepts as floats
            r = client.post(PREDICT, content=json.dumps(body).encode())
            statuses.append(r.status_code)
            assert r.status_code in (200, 422), (body, r.status_code, r.text[:300])
            if r.status_code == 422:
                _assert_error_json(r, body)
            else:
                assert len(r.json()["predictions"]) == len(body["instances"])

        check()
    assert 422 in statuses


# -- issue 13: what an unauthenticated caller learns, docs routes, metric tags ---------------------------

def test_a_utf16_body_is_still_answered(served):
    r = httpx.post(served["base"] + PREDICT, content=json.dumps({"instances": [ROW]}).encode("utf-16"),
                   headers=served["auth"], timeout=30)
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("method,path", [
    ("GET", f"/v2/models/{MODEL}/ready"), ("GET", "/v2/models/nope/ready"), ("GET", "/v2/models/nope"),
    ("POST", "/v2/models/nope/infer"), ("POST", "/predict/nope"), ("POST", "/feedback/nope"),
])
def test_without_a_token_no_model_is_named_or_confirmed(served, method, path):
    """/ready needs a token as the metadata does, and an unknown name is a 401 before it is a 404: a caller
    without a token cannot tell a served name from a made-up one, nor read the served name in a 404."""
    r = httpx.request(method, served["base"] + path, content=b"{}" if method == "POST" else None, timeout=30)
    assert r.status_code == 401, r.text[:300]
    _assert_error_json(r, path)
    assert MODEL not in r.text and "nope" not in r.text, r.text[:300]


def test_model_ready_answers_a_token_holder(served):
    ok = httpx.get(f"{served['base']}/v2/models/{MODEL}/ready", headers=served["auth"], timeout=30)
    assert ok.status_code == 200 and ok.json() == {"name": MODEL, "ready": True}, ok.text[:300]
    nope = httpx.get(f"{served['base']}/v2/models/nope/ready", headers=served["auth"], timeout=30)
    assert nope.status_code == 404
    _assert_error_json(nope, "ready")


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_docs_routes_are_off_unless_configured(served, path):
    """The main app has the default (serve.docs off): as any path without a route. The back-pressure app
    has them on: the same document the app builds in-process, and the pages pointing at it under its prefix."""
    from aiinfra.serving.app import api

    off = httpx.get(served["base"] + path, timeout=30)
    assert off.status_code == 404, off.text[:300]
    _assert_error_json(off, path)
    on = httpx.get(served["base"] + BP + path, timeout=30)
    assert on.status_code == 200, on.text[:300]
    if path == "/openapi.json":
        assert on.json() == json.loads(json.dumps(api.openapi()))
    else:
        assert f"{BP}/openapi.json" in on.text


def _scrape_metrics(done, timeout_s: float) -> str:
    """Everything on the cluster's Prometheus endpoints (Ray lists them in a file), once ``done(text)`` holds."""
    discovery = Path("/tmp/ray/prom_metrics_service_discovery.json")  # Ray writes its scrape targets here
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        targets = [t for group in json.loads(discovery.read_text()) for t in group["targets"]] if discovery.exists() else []
        text = ""
        for target in targets:
            try:
                text += httpx.get(f"http://{target}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
        if done(text):
            break
        time.sleep(2)
    return text


def test_metrics_tag_only_a_name_found_served(served):
    """A made-up name, with a token (404) or without (401), is tagged `(unknown)`: no series of its own."""
    import uuid

    made_up = f"zz{uuid.uuid4().hex}"
    assert httpx.post(f"{served['base']}/predict/{made_up}", content=_row(), timeout=30).status_code == 401
    assert httpx.post(f"{served['base']}/predict/{made_up}", content=_row(), headers=served["auth"], timeout=30).status_code == 404
    assert httpx.get(f"{served['base']}/v2/models/{made_up}/ready", timeout=30).status_code == 401

    def unknown_401(text: str) -> bool:
        return any(line.startswith("ray_aiinfra_request_errors") and 'model="(unknown)"' in line and 'status="401"' in line
                   and 'route="/predict/{name}"' in line for line in text.splitlines())

    text = _scrape_metrics(unknown_401, timeout_s=90)
    assert unknown_401(text), text[-2000:]
    assert made_up not in text


# -- b. back-pressure ---------------------------------------------------------------------------------

def _burst(base: str, prefix: str, auth: dict, clients: int = 32) -> list[tuple[int, float, str]]:
    """``clients`` concurrent heavy requests (4,000 rows each): status, seconds and body of each."""
    rows = [ROW if i % 2 else CALM for i in range(4000)]
    payload = json.dumps({"instances": rows}).encode()
    assert len(payload) < 1 << 20

    async def one(client: httpx.AsyncClient) -> tuple[int, float, str]:
        t0 = time.perf_counter()
        r = await client.post(f"{prefix}/predict/{MODEL}", content=payload)
        return r.status_code, time.perf_counter() - t0, r.text

    async def burst() -> list[tuple[int, float, str]]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=60, limits=limits) as client:
            assert (await client.post(f"{prefix}/predict/{MODEL}", content=_row())).status_code == 200  # warm
            return await asyncio.gather(*(one(client) for _ in range(clients)))

    return asyncio.run(burst())


def test_back_pressure_answers_503_at_once_and_serves_the_rest(served):
    """max_ongoing_requests=1, max_queued_requests=1 (from config.serve): of 32 concurrent heavy requests,
    what does not fit is refused with 503 quickly; everything else is answered 200."""
    results = _burst(served["base"], BP, served["auth"])
    rows = 4000
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503}, [(c, t[:200]) for c, _, t in results if c not in (200, 503)]
    assert codes.count(503) >= 1 and codes.count(200) >= 2, codes
    refused = [s for c, s, _ in results if c == 503]
    served_s = [s for c, s, _ in results if c == 200]
    assert max(refused) < 5.0, refused  # refused at once, not after the 30 s request timeout
    assert sorted(refused)[len(refused) // 2] < max(served_s), (refused, served_s)
    for c, _, text in results:
        if c == 200:
            assert len(json.loads(text)["predictions"]) == rows


# -- c. OIP v2 round trip, and 403 on the OIP routes ---------------------------------------------------

def test_oip_v2_infer_round_trip_with_every_datatype_of_the_signature(served):
    base, auth = served["base"], served["auth"]
    meta = httpx.get(f"{base}/v2/models/{MODEL}", headers=auth, timeout=30).json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "tenure_months": "FP64", "monthly_charges": "FP64", "support_calls": "INT64", "plan": "BYTES",
        "region": "BYTES", "autopay": "BOOL"}
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "INT64", "probability": "FP64"}
    body = {
        "id": "rt-1",
        "parameters": {"content_type": "np"},
        "inputs": [
            _t("tenure_months", "FP32", [2.0, 60.0]),
            _t("monthly_charges", "FP64", [150.0, 30.0]),
            _t("support_calls", "INT64", [[6], [0]], shape=[2, 1]),
            _t("plan", "BYTES", ["basic", "premium"]),
            _t("region", "BYTES", ["north", "north"]),
            _t("autopay", "BOOL", [False, True]),
        ],
    }
    r = httpx.post(f"{base}{INFER}", content=json.dumps(body).encode(), headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == MODEL and out["model_version"] == str(served["version"]) and out["id"] == "rt-1"
    outputs = {o["name"]: o for o in out["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [2]
    assert outputs["probability"]["datatype"] == "FP64" and outputs["probability"]["shape"] == [2]
    assert all(v in (0, 1) for v in outputs["label"]["data"])
    assert all(0.0 <= p <= 1.0 for p in outputs["probability"]["data"])
    # the same rows through /predict give the same answers (one Predictor behind both routes)
    same = httpx.post(f"{base}{PREDICT}", json={"instances": [ROW, CALM]}, headers=auth, timeout=30).json()
    assert [p["probability"] for p in same["predictions"]] == outputs["probability"]["data"]
    assert [p["label"] for p in same["predictions"]] == outputs["label"]["data"]
    # `outputs` picks tensors
    only = httpx.post(f"{base}{INFER}", json={**body, "outputs": [{"name": "probability"}]}, headers=auth, timeout=30).json()
    assert [o["name"] for o in only["outputs"]] == ["probability"]


def test_tritonclient_round_trips_binary_tensors_and_json_alike(served):
    """A real Triton client (tritonclient.http) against our OIP route: tensors as binary after the JSON header
    (binary_data=True) and as JSON, outputs asked as binary; the same answers either way and as /predict."""
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    base = served["base"]
    # A fresh dict each call: tritonclient writes Inference-Header-Content-Length into the headers it is given.
    auth = served["auth"]
    fresh = lambda: dict(auth)  # noqa: E731
    client = triton.InferenceServerClient(base.removeprefix("http://"), network_timeout=30)
    columns = {"tenure_months": ("FP64", np.array([2.0, 60.0])), "monthly_charges": ("FP64", np.array([150.0, 30.0])),
               "support_calls": ("INT64", np.array([[6], [0]], dtype=np.int64)),
               "plan": ("BYTES", np.array([b"basic", b"premium"], dtype=object)),
               "region": ("BYTES", np.array([b"north", b"north"], dtype=object)),
               "autopay": ("BOOL", np.array([False, True]))}

    def infer(binary: bool, outputs_binary: bool):
        inputs = []
        for name, (datatype, values) in columns.items():
            tensor = triton.InferInput(name, list(values.shape), datatype)
            tensor.set_data_from_numpy(values, binary_data=binary)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(n, binary_data=outputs_binary) for n in ("probability", "label")]
        return client.infer(MODEL, inputs, outputs=outputs, headers=fresh(), request_id="triton-1")

    binary, as_json = infer(True, True), infer(False, False)
    assert binary.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 16  # two FP64, as bytes
    assert "data" in as_json.get_response()["outputs"][0]
    same = httpx.post(f"{base}{PREDICT}", json={"instances": [ROW, CALM]}, headers=auth, timeout=30).json()
    for result in (binary, as_json):
        assert result.as_numpy("probability").tolist() == [p["probability"] for p in same["predictions"]]
        assert result.as_numpy("label").tolist() == [p["label"] for p in same["predictions"]]
    assert binary.get_response()["id"] == "triton-1"
    # Naming no outputs asks for every output as binary (tritonclient sets binary_data_output).
    inputs = []
    for name, (datatype, values) in columns.items():
        tensor = triton.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    everything = client.infer(MODEL, inputs, headers=fresh())
    assert sorted(o["name"] for o in everything.get_response()["outputs"]) == ["label", "probability"]
    assert everything.as_numpy("probability").tolist() == [p["probability"] for p in same["predictions"]]
    # A tensor whose bytes do not fit its shape: a 422 naming it, which the client raises.
    bad = triton.InferInput("tenure_months", [3], "FP64")
    bad.set_data_from_numpy(np.array([1.0, 2.0, 3.0]), binary_data=True)
    bad._parameters["binary_data_size"] = 16  # noqa: SLF001 - a client that lies about the size
    bad._raw_data = bad._raw_data[:16]  # noqa: SLF001
    with pytest.raises(InferenceServerException, match="tenure_months"):
        client.infer(MODEL, [bad, *inputs[1:]], headers=fresh())
    client.close()


def test_binary_bodies_that_do_not_add_up_get_a_json_422(served):
    base, auth = served["base"], served["auth"]
    head = json.dumps({"inputs": [{"name": "tenure_months", "datatype": "FP64", "shape": [1],
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    for length, extra, needle in ((len(head) + 100, b"", "past the end"), (len(head), b"\x00" * 9, "add up to 8 bytes"),
                                  ("x", b"", "byte count"), (len(head), b"\x00" * 7, "goes past")):
        r = httpx.post(f"{base}{INFER}", content=head + extra, timeout=30,
                       headers={**auth, "Inference-Header-Content-Length": str(length)})
        assert r.status_code == 422 and needle in r.json()["error"], (length, r.text)


def test_a_token_without_the_predict_role_is_403_on_the_oip_routes(served):
    base, fb = served["base"], served["labeller_only"]
    for method, path, body in (("POST", INFER, _infer(GOOD_TENSORS)), ("GET", f"/v2/models/{MODEL}", None)):
        r = httpx.request(method, base + path, content=body, headers=fb, timeout=30)
        assert r.status_code == 403, (path, r.text[:300])
        assert "'labeller' token may not predict" in r.json()["error"]


def test_the_champion_answered_in_the_router_matches_and_follows_its_alias(served, platform, tmp_path):
    """serve.champion_in_router: the same answers as the model deployment, 422s from the same validation,
    an alias move under continuous load with no failed request, and back-pressure: with the model in the
    router, the router sheds what is past the model's limits (1 + 1 here) at once, with a JSON 503."""
    import threading

    from ray import serve

    from aiinfra.serving.app import build_app

    base, auth = served["base"], served["auth"]
    # Two CPUs hold two of these apps' CPU reservations, not three: the back-pressure app's test ran above.
    serve.delete("httpcheck-bp")
    platform.registry.set_alias(MODEL, served["version"], "champion")
    cfg = served["config"]
    local = cfg.model_copy(update={"serve": cfg.serve.model_copy(
        update={"champion_in_router": True, "max_ongoing_requests": 1, "max_queued_requests": 1})})
    serve.run(build_app(local, f"{MODEL}@champion"), name="httpcheck-local", route_prefix="/local")
    try:
        here = httpx.post(f"{base}/local{PREDICT}", json={"instances": [ROW, CALM]}, headers=auth, timeout=30)
        there = httpx.post(f"{base}{PREDICT}", json={"instances": [ROW, CALM]}, headers=auth, timeout=30)
        assert here.status_code == 200, here.text
        assert here.json()["predictions"] == there.json()["predictions"]
        bad = httpx.post(f"{base}/local{PREDICT}", json={"instances": [{**ROW, "autopay": "yes"}]}, headers=auth, timeout=30)
        assert bad.status_code == 422 and "autopay" in bad.json()["error"]

        seen: dict[int, int] = {}
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    r = client.post(f"{base}/local{PREDICT}", json={"instances": [ROW]}, headers=auth)
                    if r.status_code == 200:
                        v = r.json()["version"]
                        seen[v] = seen.get(v, 0) + 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

        client = threading.Thread(target=load)
        client.start()
        try:
            time.sleep(1.0)
            new = platform.registry.register(MODEL, tmp_path / "m2", signature=_model_dir(tmp_path / "m2"))
            platform.registry.set_alias(MODEL, new.version, "champion")
            deadline = time.monotonic() + 60
            while seen.get(new.version, 0) < 20 and time.monotonic() < deadline and not failures:
                time.sleep(0.2)
        finally:
            stop.set()
            client.join(timeout=60)
        assert not failures, failures[:3]
        assert seen.get(served["version"], 0) > 0 and seen.get(new.version, 0) >= 20, seen

        results = _burst(base, "/local", auth)
        codes = [c for c, _, _ in results]
        assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 2, codes
        assert max(s for c, s, _ in results if c == 503) < 5.0  # refused at once, not after the request timeout
        for c, _, text in results:  # shed by the router itself: the contract's JSON, naming the capacity
            if c == 503:
                assert "at capacity" in json.loads(text)["error"], text[:200]
    finally:
        serve.delete("httpcheck-local")


def test_a_multi_model_endpoint_adds_and_removes_models_under_load_without_failing_the_others(served, platform, tmp_path):
    """One app, several models: one declared by its builder, one added before it starts, a third added and the
    second removed while clients call both; the declared model's clients see no failed request throughout, the
    removed model's see 200s and then JSON 404s (never a 5xx). Two versions kept per replica for three models:
    the LRU loads the long tail again on demand."""
    import threading

    from ray import serve

    from aiinfra.serving.app import build_app
    from aiinfra.serving.endpoint import ServedModels
    from aiinfra.storage import open_metadata_db

    base, auth = served["base"], served["auth"]
    try:
        serve.delete("httpcheck-bp")  # two CPUs: room for this app's reservations (gone already if the test above ran)
    except Exception:  # noqa: BLE001
        pass
    second, third = f"{MODEL}-b", f"{MODEL}-c"
    for name in (second, third):
        platform.registry.register(name, tmp_path / name, signature=_model_dir(tmp_path / name))
    cfg = served["config"]
    multi = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"champion_in_router": True,
                                                                         "max_models_per_replica": 2})})
    app, prefix = "httpcheck-multi", "/multi"
    db = open_metadata_db(cfg.metadata_url)
    added = ServedModels(db)
    added.add(app, f"{second}@1")
    serve.run(build_app(multi, [f"{MODEL}@{served['version']}"]), name=app, route_prefix=prefix)
    try:
        def predict(client, name):
            return client.post(f"{base}{prefix}/predict/{name}", json={"instances": [ROW]}, headers=auth)

        with httpx.Client(timeout=30) as client:
            for name in (MODEL, second):
                r = predict(client, name)
                assert r.status_code == 200 and r.json()["model"] == name, r.text
            assert predict(client, third).status_code == 404

        codes: dict[str, list[int]] = {MODEL: [], second: []}
        bodies: list[str] = []
        stop = threading.Event()

        def load(name: str) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    r = predict(client, name)
                    codes[name].append(r.status_code)
                    if r.status_code != 200:
                        bodies.append(r.text[:200])

        clients = [threading.Thread(target=load, args=(n,)) for n in codes]
        for t in clients:
            t.start()

        def wait_for(done, what: str) -> None:
            deadline = time.monotonic() + 60
            while not done():
                assert time.monotonic() < deadline, what
                time.sleep(0.2)

        try:
            time.sleep(1.0)
            added.add(app, f"{third}@1")  # no redeploy: the replicas pick it up on their next follower step
            with httpx.Client(timeout=30) as client:
                wait_for(lambda: predict(client, third).status_code == 200, f"{third} never served")
                meta = client.get(f"{base}{prefix}/v2/models/{third}", headers=auth)
                assert meta.status_code == 200 and meta.json()["name"] == third
                assert client.get(f"{base}{prefix}/v2/models/{third}/ready", headers=auth).json()["ready"] is True
            added.remove(app, second)
            wait_for(lambda: codes[second][-1:] == [404], f"{second} never removed")
            time.sleep(1.0)  # the declared model keeps being asked after the removal too
        finally:
            stop.set()
            for t in clients:
                t.join(timeout=60)
        assert codes[MODEL] and set(codes[MODEL]) == {200}, (set(codes[MODEL]), bodies[:3])
        first_404 = codes[second].index(404)
        assert set(codes[second][:first_404]) == {200} and set(codes[second][first_404:]) == {404}, bodies[:3]
        gone = httpx.post(f"{base}{prefix}/predict/{second}", json={"instances": [ROW]}, headers=auth, timeout=30)
        _assert_error_json(gone, "removed")
        assert f"{second!r} is not served here" in gone.json()["error"] and third in gone.json()["error"]

        state = serve.get_app_handle(app).served.remote().result(timeout_s=30)
        assert set(state["models"]) == {MODEL, third}
        assert state["models"][MODEL]["declared"] and not state["models"][third]["declared"]
        assert len(state["loaded"]) <= 2 and state["problems"] == {}
        # A row naming a version that does not exist is reported, and the others keep serving.
        added.add(app, f"{second}@99")
        wait_for(lambda: second in serve.get_app_handle(app).served.remote().result(timeout_s=30)["problems"],
                 "a bad row was not reported")
        with httpx.Client(timeout=30) as client:
            assert predict(client, MODEL).status_code == 200 and predict(client, third).status_code == 200
    finally:
        serve.delete(app)
        added.clear(app)
        db.close()


# -- OIP v2 over gRPC, with Triton's own client ---------------------------------------------------------------------
APP = {"application": "httpcheck"}  # two Serve apps run here: gRPC calls name theirs (Serve's proxy routes by it)
GRPC_ROWS = [("tenure_months", "FP64", [2.0, 60.0]), ("monthly_charges", "FP64", [150.0, 30.0]),
             ("support_calls", "INT64", [6, 0]), ("plan", "BYTES", ["basic", "premium"]),
             ("region", "BYTES", ["north", "north"]), ("autopay", "BOOL", [False, True])]


def _grpc_inputs(rows=GRPC_ROWS, **swap):
    import numpy as np
    import tritonclient.grpc as grpcclient

    numpy_type = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "BYTES": object, "BOOL": bool}
    out = []
    for name, datatype, values in rows:
        datatype, values = swap.get(name, (datatype, values))
        t = grpcclient.InferInput(name, [len(values)], datatype)
        t.set_data_from_numpy(np.array(values, dtype=numpy_type[datatype]))  # raw_input_contents, as Triton sends
        out.append(t)
    return out


def _grpc_headers(served) -> dict[str, str]:
    return {"authorization": served["auth"]["Authorization"], **APP}


def test_tritonclient_grpc_round_trips_with_the_rest_routes_answers(served):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served["grpc"])
    headers = _grpc_headers(served)
    assert client.is_server_live(headers=APP) and client.is_server_ready(headers=APP)
    assert client.is_model_ready(MODEL, headers=headers)
    meta = client.get_model_metadata(MODEL, headers=headers, as_json=True)
    assert meta["versions"] == [str(served["version"])]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["plan"] == "BYTES"
    result = client.infer(MODEL, _grpc_inputs(), headers=headers, request_id="grpc-1")
    assert result.get_response().id == "grpc-1" and result.get_response().model_version == str(served["version"])
    probability = result.as_numpy("probability")
    body = {"inputs": [{"name": n, "datatype": d, "shape": [len(v)], "data": v} for n, d, v in GRPC_ROWS]}
    rest = httpx.post(f"{served['base']}/v2/models/{MODEL}/infer", json=body, headers=served["auth"]).json()
    rest_p = next(o for o in rest["outputs"] if o["name"] == "probability")["data"]
    assert probability.tolist() == pytest.approx(rest_p, abs=1e-6)
    labels = result.as_numpy("label").tolist()
    assert labels == next(o for o in rest["outputs"] if o["name"] == "label")["data"]
    # Measured as the HTTP routes are, by model, version and route.
    tags = (f'model="{MODEL}"', 'route="grpc:ModelInfer"', 'status="200"')

    def measured(text: str) -> bool:
        return any(line.startswith("ray_aiinfra_requests") and all(t in line for t in tags) for line in text.splitlines())

    text = _scrape_metrics(measured, timeout_s=60)
    assert measured(text), [line for line in text.splitlines() if "grpc" in line][:5]


@pytest.mark.parametrize("case, code, needle", [
    ("no token", "UNAUTHENTICATED", "token"),
    ("labeller token", "PERMISSION_DENIED", "predict"),
    ("unknown model", "NOT_FOUND", "nope"),
    ("wrong datatype", "INVALID_ARGUMENT", "plan"),
    ("rows disagree", "INVALID_ARGUMENT", "rows"),
    ("unknown input", "INVALID_ARGUMENT", "unknown input"),
])
def test_bad_grpc_calls_get_the_matching_status_and_the_server_keeps_answering(served, case, code, needle):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(served["grpc"])
    headers, model, inputs = _grpc_headers(served), MODEL, _grpc_inputs()
    if case == "no token":
        headers = dict(APP)
    elif case == "labeller token":
        headers = {"authorization": served["labeller_only"]["Authorization"], **APP}
    elif case == "unknown model":
        model = "nope"
    elif case == "wrong datatype":
        inputs = _grpc_inputs(plan=("FP32", [1.0, 2.0]))
    elif case == "rows disagree":
        inputs = _grpc_inputs(region=("BYTES", ["north", "north", "south"]))
    elif case == "unknown input":
        inputs = _grpc_inputs(rows=[*GRPC_ROWS, ("colour", "BYTES", ["red", "blue"])])
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, inputs, headers=headers)
    assert e.value.status() == f"StatusCode.{code}", e.value
    assert needle in e.value.message()
    assert client.infer(MODEL, _grpc_inputs(), headers=_grpc_headers(served)).as_numpy("probability").shape == (2,)
