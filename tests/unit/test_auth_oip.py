"""Bearer tokens with roles, and Open Inference Protocol v2 decoding, without Ray."""

from __future__ import annotations

import os
import stat

import pytest

from aiinfra.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from aiinfra.identity.tokens import COMPONENT, MIGRATIONS, TokenStore, ensure_admin_token, read_token_file
from aiinfra.registry.types import Signature
from aiinfra.serving.oip import decode_infer_request, encode_infer_response
from aiinfra.storage import open_metadata_db

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store


@pytest.fixture
def tokens(metadata_url):
    clock = {"now": 1000.0}
    return TokenStore(open_metadata_db(metadata_url), clock=lambda: clock["now"], background=False), clock


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
    with pytest.raises(Forbidden, match="may not feedback"):  # labels steer the autopilot: a role of their own
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


# feedback: an application that predicts and reports its own outcomes; labeller: labels anyone's requests, no more.
@pytest.mark.parametrize("role,may", [("feedback", {"predict", "feedback"}), ("labeller", {"feedback"}), ("approver", set()),
                                      ("admin", {"predict", "feedback", "admin"}), ("predict", {"predict"})])
def test_each_role_may_exactly_its_actions(tokens, role, may):
    store, _ = tokens
    p = store.verify(f"Bearer {store.create(role)}")
    for action in ("predict", "feedback", "admin"):
        if action in may:
            p.require(action)
        else:
            with pytest.raises(Forbidden):
                p.require(action)


def test_a_token_expires_on_the_clock(tokens):
    store, clock = tokens
    made = store.issue("predict", expires_in_s=3600)
    assert made.expires_at == 1000.0 + 3600
    clock["now"] += 3599
    store.verify(f"Bearer {made.token}").require("predict", model="churn")
    clock["now"] += 1
    with pytest.raises(Unauthorized, match="expired"):
        store.verify(f"Bearer {made.token}")
    with pytest.raises(Unauthorized, match="invalid"):  # a wrong secret learns nothing of the expiry
        store.verify(f"Bearer aii_{made.id}_{'x' * 43}")
    for bad in (0, -5):
        with pytest.raises(InvalidInput, match="positive"):
            store.issue("predict", expires_in_s=bad)


def test_an_expired_or_scoped_admin_does_not_count_as_the_admin(tokens):
    store, clock = tokens
    store.create("admin", model="churn")
    store.create("admin", expires_in_s=10)
    assert store.has_admin()
    clock["now"] += 10
    assert not store.has_admin()  # ensure_admin_token would make a new one


def test_a_scoped_token_is_403_on_another_model_and_on_no_model(tokens):
    store, _ = tokens
    p = store.verify(f"Bearer {store.create('feedback', model='churn')}")
    assert p.model == "churn"
    p.require("feedback", model="churn")
    with pytest.raises(Forbidden, match="scoped to model 'churn'") as exc:
        p.require("feedback", model="fraud")
    assert "fraud" not in str(exc.value)
    with pytest.raises(Forbidden, match="scoped"):
        p.require("feedback")
    with pytest.raises(Forbidden, match="may not admin"):  # the role still applies within the scope
        p.require("admin", model="churn")
    store.verify(f"Bearer {store.create('predict')}").require("predict", model="anything")  # unscoped: any
    with pytest.raises(InvalidInput, match="path separators"):
        store.create("predict", model="a/b")


def test_list_shows_the_lifecycle_and_never_a_secret(tokens):
    store, clock = tokens
    a = store.issue("predict", who="alice", model="churn", expires_in_s=60)
    clock["now"] += 1
    b = store.issue("labeller", who="bob")
    clock["now"] += 4
    store.revoke(b.id)
    listed = store.list()
    assert [r["id"] for r in listed] == [a.id, b.id]  # oldest first
    assert set(listed[0]) == {"id", "role", "model", "holder", "created_at", "created_by", "expires_at", "last_used_at", "revoked_at"}
    assert (listed[0]["model"], listed[0]["expires_at"], listed[0]["revoked_at"]) == ("churn", 1060.0, None)
    assert (listed[1]["role"], listed[1]["model"], listed[1]["revoked_at"]) == ("labeller", None, 1005.0)
    hashes = [r["secret_sha256"] for r in store.db.query("SELECT secret_sha256 FROM api_tokens")]
    for t in (a, b):
        assert t.token.split("_", 2)[2] not in str(listed)
    assert not any(h in str(listed) for h in hashes)
    with pytest.raises(NotFound, match="no active token"):
        store.revoke(b.id)  # twice
    with pytest.raises(NotFound):
        store.revoke("nope")


def test_last_use_is_written_in_batches_not_per_request(tokens):
    store, clock = tokens
    a, b = store.issue("predict"), store.issue("predict")
    writes = []
    real = store.db.transaction
    store.db.transaction = lambda: (writes.append(1), real())[1]
    for _ in range(50):
        store.verify(f"Bearer {a.token}")
        clock["now"] += 1
    store.verify(f"Bearer {b.token}")
    assert writes == []  # the request path wrote nothing
    assert store.flush_last_used() == 2 and len(writes) == 1  # both tokens in one transaction
    assert store.flush_last_used() == 0 and len(writes) == 1  # nothing used since: no write
    used = {r["id"]: r["last_used_at"] for r in store.list()}
    assert used == {a.id: 1049.0, b.id: 1050.0}
    # An older use (another replica's, flushed late) does not move it back.
    store._record_use(a.id, 1001.0)
    store.flush_last_used()
    assert {r["id"]: r["last_used_at"] for r in store.list()}[a.id] == 1049.0


def test_a_failed_flush_keeps_the_uses_for_the_next(tokens):
    store, clock = tokens
    a = store.issue("predict")
    store.verify(f"Bearer {a.token}")
    real = store.db.transaction

    def down():
        raise ConnectionError("db away")

    store.db.transaction = down
    with pytest.raises(ConnectionError):
        store.flush_last_used()
    store.db.transaction = real
    assert store.flush_last_used() == 1 and store.list()[0]["last_used_at"] == 1000.0


def test_the_background_writer_records_last_use_off_the_request_path(metadata_url):
    import time

    store = TokenStore(open_metadata_db(metadata_url), last_used_interval_s=0.05)
    made = store.issue("predict")
    assert store._flusher is None  # started by the first use, not by opening the store (the CLI never starts one)
    store.verify(f"Bearer {made.token}")
    deadline = time.monotonic() + 10
    while store.list()[0]["last_used_at"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    store.stop()
    assert not store._flusher.is_alive()


def test_the_background_writer_ends_with_its_store(metadata_url):
    import gc
    import time

    store = TokenStore(open_metadata_db(metadata_url), last_used_interval_s=0.02)
    store.verify(f"Bearer {store.create('predict')}")
    flusher = store._flusher
    del store
    gc.collect()
    deadline = time.monotonic() + 10
    while flusher.is_alive():  # a store dropped without stop() leaves no thread behind
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_lifecycle_migration_upgrades_an_old_table_in_place(metadata_url):
    import hashlib

    db = open_metadata_db(metadata_url)
    assert db.ensure_schema(COMPONENT, MIGRATIONS[:1]) == 1  # the table as the previous release made it
    with db.transaction() as tx:
        for token_id, role, revoked in (("0ld00000", "admin", None), ("0ld00001", "predict", None), ("0ld00002", "feedback", 5.0)):
            tx.execute("INSERT INTO api_tokens (id, secret_sha256, role, created_at, created_by, revoked_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (token_id, hashlib.sha256(b"s3cret").hexdigest(), role, 1.0, "old", revoked))
    store = TokenStore(db, background=False)
    assert db.schema_version(COMPONENT) == len(MIGRATIONS) == 4
    rows = store.list()
    assert [(r["id"], r["role"], r["created_by"], r["revoked_at"]) for r in rows] == [
        ("0ld00000", "admin", "old", None), ("0ld00001", "predict", "old", None), ("0ld00002", "feedback", "old", 5.0)]
    assert all(r["model"] is None and r["expires_at"] is None and r["last_used_at"] is None for r in rows)
    p = store.verify("Bearer aii_0ld00001_s3cret")  # an old token keeps working: any model, no expiry
    assert (p.role, p.model) == ("predict", None)
    p.require("predict", model="churn")
    with pytest.raises(Unauthorized, match="revoked"):
        store.verify("Bearer aii_0ld00002_s3cret")
    assert store.has_admin()
    new = store.issue("predict", model="churn", expires_in_s=60)  # and the new columns are written
    assert store.verify(f"Bearer {new.token}").model == "churn"
    TokenStore(db, background=False)  # a second open migrates nothing
    assert db.schema_version(COMPONENT) == 4 and len(store.list()) == 4


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


# -- issue 13, the smaller holes: bodies, ids and files ------------------------------------------------

def test_an_oip_id_is_capped_like_x_request_id():
    good = [_t("age", [1], "FP32", [1]), _t("calls", [1], "INT64", [1]), _t("plan", [1], "BYTES", ["a"])]
    assert decode_infer_request({"inputs": good, "id": "r" * 200}, SIG)[1] == "r" * 200
    with pytest.raises(InvalidInput, match="at most 200 characters"):
        decode_infer_request({"inputs": good, "id": "r" * 201}, SIG)


def test_too_many_oip_rows_are_refused_before_the_data_is_read():
    # data is not even a list: the shape alone is refused, so a huge nested `data` is never walked
    with pytest.raises(InvalidInput, match="at most 10000 rows"):
        decode_infer_request({"inputs": [_t("age", [10_001], "FP32", None)]}, SIG)
    with pytest.raises(InvalidInput, match="at most 10000 rows"):
        decode_infer_request({"inputs": [_t("age", [10**30, 1], "FP32", None)]}, SIG)


def _json_body(raw: bytes):
    import asyncio

    from starlette.requests import Request

    from aiinfra.serving.http import json_body

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    return asyncio.run(json_body(Request({"type": "http", "method": "POST", "headers": []}, receive), 1 << 20))


@pytest.mark.parametrize("raw,needle", [
    pytest.param(b'{"a": 1' + b"0" * 5000 + b"}", "too long", id="huge-int"),
    pytest.param('{"a": "\\ud800"}'.encode("utf-16"), "surrogate", id="utf16-escape"),
    pytest.param('{"a": "\\udfff"}'.encode("utf-32-le"), "surrogate", id="utf32-escape"),
    pytest.param('{"a": "\ud800"}'.encode("utf-16-le", "surrogatepass"), "JSON", id="utf16-raw"),
    pytest.param('{"a": "\ud800"}'.encode("utf-32", "surrogatepass"), "JSON", id="utf32-raw"),
    pytest.param('{"a": "\ud800"}'.encode("utf-8", "surrogatepass"), "JSON", id="utf8-raw"),
])
def test_json_bodies_that_python_cannot_hold_are_invalid_input(raw, needle):
    with pytest.raises(InvalidInput) as exc:
        _json_body(raw)
    assert needle in str(exc.value)


def test_a_utf16_body_still_parses():
    assert _json_body('{"a": "\u00e9\U0001f600"}'.encode("utf-16")) == {"a": "\u00e9\U0001f600"}


def test_the_home_and_its_files_are_private_whatever_the_umask(tmp_path):
    home = tmp_path / "home"
    old = os.umask(0)
    try:
        db = open_metadata_db(f"sqlite:///{home / 'metadata.db'}")
        try:
            token = ensure_admin_token(TokenStore(db), home / "api_token")
        finally:
            db.close()
    finally:
        os.umask(old)
    assert token
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in home.iterdir() if not p.name.startswith("metadata.db-")} == {
        "metadata.db": 0o600, "api_token": 0o600}  # and no temp file left


def test_the_token_file_is_not_written_through_a_planted_link(tmp_path, monkeypatch):
    import secrets as secrets_module

    store = TokenStore(open_metadata_db(f"sqlite:///{tmp_path / 'm.db'}"))
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setattr(secrets_module, "token_hex", lambda n=8: "0" * (2 * n))  # a name known in advance
    (home / f".api_token.{'0' * 16}.tmp").symlink_to(elsewhere)
    with pytest.raises(FileExistsError):
        ensure_admin_token(store, home / "api_token")
    assert not elsewhere.exists() and not (home / "api_token").exists()
