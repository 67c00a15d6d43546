"""The ingestion gate on Ray Data: CSV, Parquet, JSON lines; local and s3://; refusals that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from aiinfra import cli
from aiinfra.data.catalog import DatasetCatalog
from aiinfra.data.spec import load_spec
from aiinfra.data.synthetic import make_customers
from aiinfra.errors import InvalidInput
from aiinfra.pipelines.ingest import ingest
from aiinfra.storage import DigestLedger, open_artifact_store

SPEC = load_spec(Path(__file__).resolve().parents[2] / "jobs/configs/customers_spec.yaml")


@pytest.fixture(scope="module")
def customers():
    return make_customers(4_000, seed=7)


def catalog(config) -> DatasetCatalog:
    return DatasetCatalog(open_artifact_store(config.storage_root), ledger=DigestLedger.at(config.metadata_url))


def nothing_staged(config) -> bool:
    return open_artifact_store(config.storage_root).list_files("staging") == []


def test_csv_directory_with_bad_rows(platform_config, customers, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    customers.iloc[:2000].to_csv(d / "a.csv", index=False)
    customers.iloc[2000:].to_csv(d / "b.csv", index=False)
    with open(d / "b.csv", "a") as f:
        f.write("7,2026-01-01,abc,5,1,basic,north,0\n")  # tenure not a number
        f.write("8,2026-01-01,5,5,1,gold,north,0\n")  # plan not allowed
    r = ingest(platform_config, "cust_csv", str(d), spec=SPEC)
    v = r.version
    assert r.created and (v.rows_in, v.row_count, v.quarantined_count) == (4002, 4000, 2)
    assert v.quarantine_reasons == {"tenure_months: not a valid float64": 1, "plan: not an allowed value": 1}
    q = pd.concat(pd.read_parquet(open_artifact_store(platform_config.storage_root).path(f"quarantine/cust_csv/{v.version}/{f}"))
                  for f in v.quarantine_files)
    assert sorted(q["_reason"]) == ["plan: not an allowed value", "tenure_months: not a valid float64"]
    assert all(p.endswith("b.csv") for p in q["path"])
    assert v.profile.columns["plan"].top[0][0] == "basic" and v.profile.row_count == 4000
    assert nothing_staged(platform_config)

    again = ingest(platform_config, "cust_csv", str(d), spec=SPEC)
    assert not again.created and again.version.version == v.version  # same content, nothing new


def test_same_content_same_id_across_formats_order_and_partitioning(platform_config, customers, tmp_path):
    customers.to_csv(tmp_path / "one.csv", index=False)
    shuffled = customers.sample(frac=1.0, random_state=1)
    (tmp_path / "parts").mkdir()
    for i, chunk in enumerate([shuffled.iloc[:700], shuffled.iloc[700:2500], shuffled.iloc[2500:]]):
        chunk.to_parquet(tmp_path / "parts" / f"p{i}.parquet", index=False)
    with open(tmp_path / "rows.jsonl", "w") as f:
        for rec in shuffled.assign(event_ts=shuffled["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%S")).to_dict("records"):
            f.write(json.dumps(rec) + "\n")
    a = ingest(platform_config, "cust_same", str(tmp_path / "one.csv"), spec=SPEC).version
    b = ingest(platform_config, "cust_same", str(tmp_path / "parts"), spec=SPEC)
    c = ingest(platform_config, "cust_same", str(tmp_path / "rows.jsonl"), spec=SPEC)
    assert b.version.version == a.version == c.version.version
    assert not b.created and not c.created
    assert [v.version for v in catalog(platform_config).versions("cust_same")] == [a.version]
    changed = customers.copy()
    changed.loc[0, "monthly_charges"] += 1
    changed.to_parquet(tmp_path / "changed.parquet", index=False)
    d = ingest(platform_config, "cust_same", str(tmp_path / "changed.parquet"), spec=SPEC).version
    assert d.version != a.version and d.parent_version == a.version


@pytest.mark.parametrize("where", ["driver", "shuffle"])
def test_duplicate_keys_go_to_quarantine(platform_config, customers, tmp_path, monkeypatch, where):
    """Up to KEYS_PER_PARTITION keys are counted in the driver, beyond on a Ray Data shuffle: the same answer."""
    import aiinfra.pipelines.ingest as ingestion

    if where == "shuffle":
        monkeypatch.setattr(ingestion, "KEYS_PER_PARTITION", 1_000)
    dup = pd.concat([customers, customers.iloc[:3]])
    dup.to_parquet(tmp_path / "dup.parquet", index=False)
    v = ingest(platform_config, f"cust_dup_{where}", str(tmp_path / "dup.parquet"), spec=SPEC).version
    # every row of a repeated key is quarantined: which copy is "right" is not ours to guess
    assert v.row_count == 4000 - 3 and v.quarantined_count == 6
    assert v.quarantine_reasons == {"customer_id: duplicate key": 6}


@pytest.mark.parametrize("case", ["missing_column", "empty", "too_many_bad", "unreadable", "no_such_path", "min_rows"])
def test_refusals_name_the_problem_and_leave_nothing(platform_config, customers, tmp_path, case):
    name = f"cust_bad_{case}"
    spec = SPEC
    if case == "missing_column":
        path = tmp_path / "m.csv"
        customers.drop(columns=["region"]).to_csv(path, index=False)
        needle = r"m.csv: missing column\(s\) region"
    elif case == "empty":
        path = tmp_path / "e.csv"
        path.write_text(",".join(customers.columns) + "\n")
        needle = "no rows"
    elif case == "too_many_bad":
        path = tmp_path / "bad.csv"
        broken = customers.copy()
        broken.loc[:199, "plan"] = "gold"
        broken.loc[200:249, "tenure_months"] = -1
        broken.to_csv(path, index=False)
        needle = r"250 of 4000 rows .* plan: not an allowed value \(200 rows\); tenure_months: below min 0 \(50 rows\)"
    elif case == "unreadable":
        path = tmp_path / "broken.parquet"
        path.write_bytes(b"PAR1 this is not parquet")
        needle = "broken.parquet"
    elif case == "no_such_path":
        path = tmp_path / "nope.csv"
        needle = "no such file"
    else:
        path = tmp_path / "few.csv"
        customers.head(10).to_csv(path, index=False)
        needle = "fewer than min_rows 100"
    with pytest.raises(InvalidInput, match=needle):
        ingest(platform_config, name, str(path), spec=spec)
    assert catalog(platform_config).versions(name) == []
    assert nothing_staged(platform_config)


def test_cli_ingest_prints_the_version_id(platform_config, customers, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIINFRA_HOME", str(platform_config.home))
    customers.to_csv(tmp_path / "c.csv", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text((Path(__file__).resolve().parents[2] / "jobs/configs/customers_spec.yaml").read_text())
    assert cli.main(["data", "ingest", "cust_cli", str(tmp_path / "c.csv"), "--spec", str(spec)]) == 0
    vid = capsys.readouterr().out.strip().splitlines()[-1]
    assert catalog(platform_config).get(f"cust_cli@{vid}").row_count == 4000
    assert cli.main(["data", "ls", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["cust_cli"]["latest"] == vid
    assert cli.main(["data", "show", f"cust_cli@{vid[:8]}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"]["columns"]["plan"]["distinct"] == 3
    changed = make_customers(4_000, seed=8)
    changed["monthly_charges"] += 30
    changed.to_csv(tmp_path / "c2.csv", index=False)
    assert cli.main(["data", "ingest", "cust_cli", str(tmp_path / "c2.csv"), "--spec", str(spec)]) == 0
    vid2 = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["data", "diff", f"cust_cli@{vid}", f"cust_cli@{vid2}", "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["profile"]["columns"]["monthly_charges"]["mean_shift_in_std"] > 1.0
    assert cli.main(["data", "ingest", "cust_cli", str(tmp_path / "c.csv"), "--spec", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_s3_source_and_lake(platform_config, customers, tmp_path, s3_server):
    """Read from and write to a real S3-compatible server (moto) on loopback."""
    from aiinfra.config import load_config

    s3, query = s3_server["client"], s3_server["query"]
    customers.to_parquet(tmp_path / "c.parquet", index=False)
    s3.upload_file(str(tmp_path / "c.parquet"), "raw", "customers/c.parquet")
    config = load_config(environ={}, home=str(tmp_path / "home"), storage_root=f"s3://lake/aiinfra{query}")
    r = ingest(config, "cust_s3", f"s3://raw/customers/c.parquet{query}", spec=SPEC)
    assert r.created and r.version.row_count == 4000
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix=f"aiinfra/datasets/cust_s3/{r.version.version}/")["Contents"]]
    assert any(k.endswith("_manifest.json") for k in keys) and any(k.endswith(".parquet") for k in keys)
    assert r.version.source_uri == "s3://raw/customers/c.parquet"
