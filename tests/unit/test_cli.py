from __future__ import annotations

import json
import re

import pytest

from aiinfra import cli
from aiinfra.cli import common


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AIINFRA_CONFIG", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(common, "cluster_running", lambda config: False)
    from aiinfra.platform import open_local

    d = tmp_path / "m"
    d.mkdir()
    (d / "weights.safetensors").write_bytes(b"\x01" * 10)
    with open_local() as p:
        p.registry.register("churn", d, metrics={"auc": 0.8}, lineage={"run_id": "r1"})
        p.registry.register("churn", d, metrics={"auc": 0.9})
    return tmp_path / "home"


def test_listing_json_is_one_document(home, capsys):
    assert cli.main(["models", "ls", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["name"] == "churn" and out[0]["latest_version"] == 2


def test_alias_then_show(home, capsys):
    assert cli.main(["models", "alias", "churn", "1", "champion"]) == 0
    capsys.readouterr()
    assert cli.main(["models", "show", "churn@champion", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["aliases"] == ["champion"] and shown["lineage"]["run_id"] == "r1"
    assert cli.main(["models", "show", "churn"]) == 0
    assert "champion" in capsys.readouterr().out
    assert cli.main(["models", "audit", "churn", "--json"]) == 0
    assert [e["action"] for e in json.loads(capsys.readouterr().out)][-1] == "set_alias"


def test_errors_go_to_stderr_with_status(home, capsys):
    assert cli.main(["models", "show", "ghost@1"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and "ghost" in err.err
    assert cli.main(["models", "alias", "churn", "1", "a/b"]) == 2
    assert "path separators" in capsys.readouterr().err


def test_a_pointer_to_a_dead_cluster_is_forgotten_and_a_live_one_kept(tmp_path):
    import socket

    from aiinfra.cluster_access import clear_stale_cluster_pointer

    pointer = tmp_path / "ray_current_cluster"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    pointer.write_text(f"127.0.0.1:{dead_port}\n")
    assert clear_stale_cluster_pointer(tmp_path) and not pointer.exists()
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        pointer.write_text(f"127.0.0.1:{live.getsockname()[1]}\n")
        assert not clear_stale_cluster_pointer(tmp_path) and pointer.exists()
    assert not clear_stale_cluster_pointer(tmp_path / "nowhere")


def test_an_invalid_autopilot_policy_is_refused_before_anything_starts(home, tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("model: churn\ncanary: {share: 0.9}\ntrigger: {consecutive_windows: 0}\n")
    assert cli.main(["autopilot", "start", str(policy)]) == 2
    err = capsys.readouterr().err
    # every bad field at once: the missing retrain section, the share over 0.5, w of 0
    assert "retrain" in err and "canary.share" in err and "consecutive_windows" in err


def test_retrain_refuses_a_config_of_another_model_before_ray_starts(home, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("name: other\ntask: binary\ndata: {dataset: customers, label: y, features: {features: "
                      "[{column: x, steps: [{op: standardize}]}]}}\nmodel: {family: tabular_mlp}\n")
    assert cli.main(["retrain", "churn", "--config", str(config)]) == 2
    assert "trains 'other', not 'churn'" in capsys.readouterr().err


def test_token_lifecycle_on_the_local_db(home, capsys):
    from aiinfra.config import load_config
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.storage import open_metadata_db

    assert cli.main(["token", "create", "--role", "labeller", "--model", "churn", "--expires", "30d",
                     "--for", "label-service", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert set(made) == {"id", "token", "role", "model", "expires_at", "holder"} and made["holder"] == "label-service"
    assert (made["role"], made["model"]) == ("labeller", "churn") and made["token"].startswith(f"aii_{made['id']}_")
    assert cli.main(["token", "create", "--role", "predict", "--expires", "12h"]) == 0
    out = capsys.readouterr()
    plain = out.out.strip()  # stdout is the token alone, so `$(aiinfra token create)` works
    assert plain.startswith("aii_") and "shown once" in out.err and "expiring" in out.err

    store = TokenStore(open_metadata_db(load_config().metadata_url), background=False)
    p = store.verify(f"Bearer {made['token']}")
    assert (p.role, p.model, p.holder) == ("labeller", "churn", "label-service")

    assert cli.main(["token", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    row = next(r for r in listed if r["id"] == made["id"])
    assert row["expires_at"] == made["expires_at"] and abs(row["expires_at"] - row["created_at"] - 30 * 86400) < 1e-3
    assert row["last_used_at"] is None and row["revoked_at"] is None and len(listed) >= 2
    assert cli.main(["token", "list"]) == 0
    table = capsys.readouterr().out
    for secret in (made["token"], plain, made["token"].split("_", 2)[2]):
        assert secret not in table and secret not in json.dumps(listed)
    assert "labeller" in table and "churn" in table and "LAST USED" in table and "label-service" in table
    assert row["holder"] == "label-service"

    assert cli.main(["token", "revoke", made["id"]]) == 0
    assert made["id"] in capsys.readouterr().out
    revoked = next(r for r in store.list() if r["id"] == made["id"])
    assert revoked["revoked_at"] is not None
    assert cli.main(["token", "revoke", made["id"]]) == 2
    assert "no active token" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--expires", "soon"], "not a duration"),
    (["--expires", "0s"], "positive"),
    (["--model", "a/b"], "path separators"),
])
def test_token_create_refuses_bad_options(home, capsys, argv, needle):
    assert cli.main(["token", "create", *argv]) == 2
    err = capsys.readouterr()
    assert needle in err.err and err.out == ""


def test_json_output_keeps_stdout_for_the_document(capsys, monkeypatch):
    """What a Ray worker prints (forwarded to the driver's stdout) lands on stderr while a --json verb runs."""
    from aiinfra import cli as cli_module
    from aiinfra.cli import common

    def noisy(args):
        print("[0] train-logloss:0.69")  # as XGBoost's round log arrives from a worker
        common.print_json({"ok": True})

    parser = cli_module.build_parser()
    monkeypatch.setattr(cli_module, "build_parser", lambda: parser)
    args = parser.parse_args(["models", "ls", "--json"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    args.func = noisy
    assert cli_module.main(["models", "ls", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"ok": True} and "train-logloss" in out.err


def test_a_protected_champion_through_the_cli(home, capsys, tmp_path, monkeypatch):
    """policy -> request -> approve (with approver tokens) -> the alias moves; a predict token may not approve."""
    from aiinfra.config import load_config
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.storage import open_metadata_db

    assert cli.main(["models", "alias", "churn", "1", "champion"]) == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("aliases:\n  champion: {approvals: 1, expires: 2h}\n")
    assert cli.main(["models", "policy", "churn", str(policy)]) == 0
    assert "1 approval(s) within 2 h" in capsys.readouterr().out
    assert cli.main(["models", "alias", "churn", "2", "champion"]) == 2
    assert "protected" in capsys.readouterr().err
    assert cli.main(["models", "request", "churn", "2", "champion", "--reason", "gate passed", "--json"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["status"] == "pending" and request["needed"] == 1

    db = open_metadata_db(load_config().metadata_url)
    tokens = TokenStore(db)
    approver, predictor = tokens.create("approver", who="test"), tokens.create("predict", who="test")
    db.close()
    monkeypatch.delenv("AIINFRA_API_TOKEN", raising=False)
    assert cli.main(["models", "approve", request["id"]]) == 2
    assert re.search("to approve req-[0-9a-f]+, send an API token of one of the roles admin, approver", capsys.readouterr().err)
    monkeypatch.setenv("AIINFRA_API_TOKEN", predictor)
    assert cli.main(["models", "approve", request["id"]]) == 2
    assert "may not approve" in capsys.readouterr().err
    (tmp_path / "approver").write_text(approver)
    assert cli.main(["models", "approve", request["id"], "--token-file", str(tmp_path / "approver")]) == 0
    out = capsys.readouterr().out
    assert "applied" in out and "churn@champion -> 2" in out
    assert cli.main(["models", "requests", "churn", "--all", "--json"]) == 0
    (done,) = json.loads(capsys.readouterr().out)
    assert done["approvals"][0]["who"].startswith("token:") and done["status"] == "applied"
