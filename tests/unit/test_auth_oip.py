"""Bearer tokens with roles, and Open Inference Protocol v2 decoding, without Ray."""

from __future__ import annotations

import os
import stat

import pytest

from aiinfra.errors import Forbidden, InvalidInput, Unauthorized
from aiinfra.registry.types import Signature
from aiinfra.serving.auth import TokenStore, ensure_admin_token, read_token_file
from aiinfra.serving.oip import decode_infer_request, encode_infer_response
from aiinfra.storage import open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store


@pytest.fixture
def tokens(metadata_url):
    clock = {"now": 1000.0}
    return TokenStore(open_metadata_db(metadata_url), clock=lambda: clock["now"]), clock


def test_tokens_are_hashed_at_rest_and_roles_enforced(tokens, tmp_path):
    store, _ = tokens
    token = store.create("predict", who="alice")
    token_id, secret = token.split("_", 2)[1:]  # the secret may itself contain "_"
    rows = store.db.query("SELECT * FROM api_tokens")
    assert secret not in str(rows) and rows[0]["created_by"] == "alice"
    p = store.verify(f"Bearer {token}")
    assert (p.token_id, p.role) == (token_id, "predict")
    p.require("predict")
    with pytest.raises(Forbidden, match="may not admin"):
        p.require("admin")
    store.verify(f"bearer {token}").require("feedback")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer nope", "Bearer aii_deadbeef_wrong"])
def test_bad_credentials_are_401(tokens, header):
    store, _ = tokens
    store.create("admin")
    with pytest.raises(Unauthorized):
        store.verify(header)


def test_wrong_secret_for_a_real_id_and_revocation(tokens):
    store, clock = tokens
    token = store.create("predict")
    token_id = token.split("_", 2)[1]
    with pytest.raises(Unauthorized):
        store.verify(f"Bearer aii_{token_id}_{'x' * 43}")
    store.revoke(token_id)
    clock["now"] += 10  # past the cache's refresh interval
    with pytest.raises(Unauthorized, match="revoked"):
        store.verify(f"Bearer {token}")
    with pytest.raises(InvalidInput, match="unknown role"):
        store.create("root")


def test_embedded_admin_token_file_is_private_and_made_once(tokens, tmp_path):
    store, _ = tokens
    f = tmp_path / "home" / "api_token"
    token = ensure_admin_token(store, f)
    assert token and read_token_file(f) == token
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert store.verify(f"Bearer {token}").role == "admin"
    assert ensure_admin_token(store, f) is None  # second start: nothing new


SIG = Signature.model_validate({
    "inputs": [{"name": "age", "dtype": "float64"}, {"name": "calls", "dtype": "int64"}, {"name": "plan", "dtype": "string"}],
    "outputs": [{"name": "label", "dtype": "int64"}, {"name": "probability", "dtype": "float64"}],
})


def test_oip_round_trip():
    body = {
        "id": "r1",
        "inputs": [
            {"name": "age", "shape": [2], "datatype": "FP32", "data": [1.5, 2.0]},
            {"name": "calls", "shape": [2, 1], "datatype": "INT64", "data": [[3], [4]]},
            {"name": "plan", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
        ],
        "outputs": [{"name": "probability"}],
        "parameters": {"content_type": "np"},
    }
    rows, rid, wanted = decode_infer_request(body, SIG)
    assert rows == [{"age": 1.5, "calls": 3, "plan": "a"}, {"age": 2.0, "calls": 4, "plan": "b"}]
    assert rid == "r1" and wanted == ["probability"]
    out = encode_infer_response([{"label": 0, "probability": 0.2}, {"label": 1, "probability": 0.9}], SIG,
                                model="m", version=3, request_id=rid, wanted=wanted)
    assert out == {"model_name": "m", "model_version": "3", "id": "r1",
                   "outputs": [{"name": "probability", "datatype": "FP64", "shape": [2], "data": [0.2, 0.9]}]}


def _t(name, shape, datatype, data):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize(
    "body,needle",
    [
        ([], "JSON object"),
        ({"inputs": []}, "non-empty"),
        ({"inputs": [_t("zzz", [1], "FP32", [1])]}, "unknown input 'zzz'"),
        ({"inputs": [_t("age", [2], "FP32", [1.0])]}, "holds 2 values but data has 1"),
        ({"inputs": [_t("age", [1], "BYTES", ["x"])]}, "datatype 'BYTES' does not fit float64"),
        ({"inputs": [_t("age", [1, 2], "FP32", [1, 2])]}, "not [N] or [N, 1]"),
        ({"inputs": [_t("age", [1], "FP32", [1]), _t("calls", [2], "INT64", [1, 2]), _t("plan", [1], "BYTES", ["a"])]}, "2 rows"),
        ({"inputs": [_t("age", [1], "FP32", [1])]}, "missing input tensor(s): calls, plan"),
        ({"inputs": [_t("age", [-1], "FP32", [1])]}, "non-negative"),
        ({"inputs": [_t("age", [1], "FP32", 5)]}, "data must be a list"),
        ({"inputs": [_t("age", [1], "FP32", [1]), _t("calls", [1], "INT64", [1]), _t("plan", [1], "BYTES", ["a"])],
          "outputs": [{"name": "nope"}]}, "unknown output"),
        ({"inputs": [_t("age", [1], "FP32", [1])], "extra": 1}, "unknown field"),
    ],
)
def test_oip_bad_requests_name_the_tensor(body, needle):
    with pytest.raises(InvalidInput) as exc:
        decode_infer_request(body, SIG)
    assert needle in str(exc.value)
