"""Credentials never leave in a URI: redact_uri, redact_text and has_credentials, and the places that store or show one."""

from __future__ import annotations

import json

import pytest

from aiinfra.redaction import has_credentials, redact_text, redact_uri

SECRET = "hunter2"
DB_URL = f"postgresql://u:{SECRET}@h/db"


# -- redact_uri ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "shown"), [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg://aiinfra:s3cr3t@db.internal:5432/aiinfra?sslmode=require",
     "postgresql+psycopg://aiinfra:***@db.internal:5432/aiinfra?sslmode=require"),
    # Percent-encoded '@' and ':' in the password: one value, hidden whole.
    ("postgresql://u:p%40ss%3Aw0rd@h:5432/db", "postgresql://u:***@h:5432/db"),
    # Raw '@' and ':' in the password (not valid, but written): up to the authority's last '@'.
    ("postgresql://u:p@ss:w@rd@h/db", "postgresql://u:***@h/db"),
    # A raw '/' in the password (AWS secret keys have them) ends the RFC authority early; still hidden.
    ("s3://AKIAEXAMPLE:wJalr/XUtnF+EMI@bucket/prefix", "s3://AKIAEXAMPLE:***@bucket/prefix"),
    ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
    ("postgresql://u:pw@[2001:db8::7]/db", "postgresql://u:***@[2001:db8::7]/db"),
    ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
    ("mysql://user:pw@host/db#frag", "mysql://user:***@host/db#frag"),
    ("//u:pw@host/db", "//u:***@host/db"),
    ("u:pw@host/db", "u:***@host/db"),  # no scheme
    # Query parameters, case-insensitive; other parameters stay readable.
    ("s3://lake/aiinfra?endpoint_override=127.0.0.1:9000&scheme=http&access_key=AK&secret_key=SK",
     "s3://lake/aiinfra?endpoint_override=127.0.0.1:9000&scheme=http&access_key=***&secret_key=***"),
    ("s3://b/p?SECRET_KEY=x&Session_Token=y&region=us-east-1", "s3://b/p?SECRET_KEY=***&Session_Token=***&region=us-east-1"),
    ("https://b.s3.amazonaws.com/k.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20240101"
     "&X-Amz-Signature=abc123&X-Amz-Expires=3600",
     "https://b.s3.amazonaws.com/k.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Signature=***&X-Amz-Expires=3600"),
    ("https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=abc%3D", "https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=***"),
    ("https://api/x?key=k&token=t&password=p&secret=s&signature=g",
     "https://api/x?key=***&token=***&password=***&secret=***&signature=***"),
    ("https://api/x?client_secret=a&access_token=b&X-Goog-Signature=c", "https://api/x?client_secret=***&access_token=***&X-Goog-Signature=***"),
    ("postgresql://u:pw@h/db?password=pw2", "postgresql://u:***@h/db?password=***"),
    ("data.csv?token=abc", "data.csv?token=***"),  # no scheme, a query all the same
])
def test_credentials_are_hidden(uri, shown):
    assert redact_uri(uri) == shown
    assert has_credentials(uri)
    assert not has_credentials(shown) or "***" in shown


@pytest.mark.parametrize("uri", [
    "/home/me/.aiinfra",
    "relative/dir",
    "./data/customers.csv",
    "~/data/c.parquet",
    "C:\\data\\c.csv",
    "sqlite:////tmp/aiinfra/metadata.db",
    "sqlite:///relative.db",
    "sqlite://",
    "file:///tmp/lake",
    "s3://bucket/prefix",
    "s3://bucket/prefix/",
    "gs://bucket/a/b",
    "gcs://bucket",
    "s3://lake/aiinfra?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1",
    "s3://bucket?endpoint_override=minio:9000",
    "postgresql://h/db",
    "postgresql://h:5432/db",
    "postgresql://user@h/db",  # a user is not a secret (peer or certificate auth)
    "postgresql://u:@h/db",  # an empty password hides nothing
    "postgresql://[::1]:5432/db?sslmode=require",
    "postgresql://[::1]/db?user=a@b",
    "postgresql:///db?host=/var/run/postgresql",
    "ray://head:10001",
    "127.0.0.1:6379",
    "http://127.0.0.1:8265",
    "s3://bucket/someone@example.com/file",
    "s3://bucket/a:b@c",
    "/tmp/a:b@c",
    "https://api/x?token",  # a parameter without a value
    "https://api/x?token=",  # nor with an empty one
    "https://api/x?keyring=1&monkey=2&keys_path=/p",  # only the parameter named key, not ones that contain it
    "",
])
def test_everything_else_is_left_byte_identical(uri):
    assert redact_uri(uri) == uri
    assert not has_credentials(uri)


def test_has_credentials_takes_none():
    assert not has_credentials(None)


def test_unicode_and_odd_bytes_survive():
    assert redact_uri("s3://bücket/päth é?region=eu") == "s3://bücket/päth é?region=eu"
    assert redact_uri("postgresql://ü:pässwört@h/db") == "postgresql://ü:***@h/db"


def test_redacting_twice_changes_nothing_more():
    for uri in (DB_URL, "s3://b/p?secret_key=x", "s3://AK:a/b@bucket/p"):
        once = redact_uri(uri)
        assert redact_uri(once) == once


# -- redact_text --------------------------------------------------------------------------------
def test_redact_text_hides_uris_it_finds_and_the_secrets_it_is_given():
    url = "postgresql://aiinfra:p%40ss@db:5432/aiinfra"
    msg = (f"could not connect to {url!r}: password authentication failed (password p@ss); "
           f"retry {url} later; storage s3://lake/x?secret_key=SK&region=eu")
    out = redact_text(msg, [url])
    assert "p@ss" not in out and "p%40ss" not in out and "SK" not in out
    assert "'postgresql://aiinfra:***@db:5432/aiinfra'" in out
    assert "s3://lake/x?secret_key=***&region=eu" in out


def test_redact_text_finds_credentials_in_uris_without_being_told():
    out = redact_text("failed: postgresql://u:hunter2@h/db (and <https://x/y?sig=abc>)")
    assert out == "failed: postgresql://u:***@h/db (and <https://x/y?sig=***>)"


def test_redact_text_hides_bare_secrets_and_keeps_locations_readable():
    out = redact_text("token tok-123 for /home/me/.aiinfra at sqlite:////tmp/m.db",
                      ["tok-123", "/home/me/.aiinfra", "sqlite:////tmp/m.db", None, ""])
    assert out == "token *** for /home/me/.aiinfra at sqlite:////tmp/m.db"


def test_redact_text_hides_a_uris_query_secret_even_when_shown_alone():
    uri = "s3://lake/p?access_key=AKIA1&secret_key=abc%2Bdef"
    out = redact_text("auth failed for key AKIA1 with secret abc+def", [uri])
    assert out == "auth failed for key *** with secret ***"


def test_redact_text_leaves_text_without_secrets_alone():
    text = "no such file: /data/x.csv; see http://127.0.0.1:8265 and s3://bucket/prefix"
    assert redact_text(text, [None, "s3://bucket/prefix"]) == text


# -- the platform never stores or shows a credential ----------------------------------------------
def test_a_submitted_job_gets_no_credentials():
    from aiinfra.config import load_config
    from aiinfra.jobs import shippable_config

    config = load_config(environ={}, home="/tmp/h", metadata_url=DB_URL,
                         storage_root=f"s3://lake/p?endpoint_override=127.0.0.1:9000&secret_key={SECRET}")
    shipped = shippable_config(config)
    assert SECRET not in json.dumps(shipped)
    assert "metadata_url" not in shipped and "storage_root" not in shipped
    plain = shippable_config(load_config(environ={}, home="/tmp/h", storage_root="s3://lake/p?endpoint_override=h:1"))
    assert plain["storage_root"] == "s3://lake/p?endpoint_override=h:1"


def test_status_shows_the_stores_without_credentials(tmp_path, monkeypatch, capsys):
    import aiinfra.cluster
    from aiinfra import cli
    from aiinfra.config import load_config

    monkeypatch.setattr(aiinfra.cluster, "use_cluster_auth", lambda config: None)
    monkeypatch.setattr(aiinfra.cluster, "running_cluster", lambda config: None)  # no Ray in unit tests
    storage = f"s3://AKIA:{SECRET}@lake/p?endpoint_override=127.0.0.1:9000&scheme=http"
    st = aiinfra.cluster.cluster_status(load_config(environ={}, home=str(tmp_path), metadata_url=DB_URL,
                                                    storage_root=storage))
    assert SECRET not in json.dumps(st)
    assert st["metadata_url"] == "postgresql://u:***@h/db"
    assert st["storage_root"] == "s3://AKIA:***@lake/p?endpoint_override=127.0.0.1:9000&scheme=http"

    monkeypatch.setenv("AIINFRA_HOME", str(tmp_path))
    monkeypatch.setenv("AIINFRA_METADATA_URL", DB_URL)
    assert cli.main(["status", "--json"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and json.loads(out)["metadata_url"] == "postgresql://u:***@h/db"


def test_a_dataset_manifest_never_holds_a_credential(tmp_path):
    from aiinfra.data.catalog import MANIFEST, DatasetCatalog, DatasetVersion
    from aiinfra.data.profile import DatasetProfile
    from aiinfra.storage import open_artifact_store

    store = open_artifact_store(str(tmp_path / "lake"))
    manifest = DatasetVersion(
        name="cust", version="abcd1234", created_at=0.0, source_uri=f"s3://AK:{SECRET}@raw/c.csv?secret_key={SECRET}",
        source_format="csv", schema=[], row_count=0, rows_in=0, quarantined_count=0, files={},
        profile=DatasetProfile(row_count=0, sample_rows=0, columns={}),
    )
    assert manifest.source_uri == "s3://AK:***@raw/c.csv?secret_key=***"
    version = DatasetCatalog(store, ledger=None).commit(manifest, {}, {})
    stored = store.read_bytes(f"{version.key}/{MANIFEST}").decode()
    assert SECRET not in stored and SECRET not in version.model_dump_json()
    # A manifest written before redaction existed is shown redacted too.
    old = json.loads(stored)
    old["source_uri"] = f"postgresql://u:{SECRET}@h/db"
    assert SECRET not in DatasetVersion.model_validate(old).source_uri


def test_storage_uris_and_messages_have_no_credentials():
    from aiinfra.errors import InvalidInput
    from aiinfra.storage import open_artifact_store

    # Opening an S3 filesystem does not connect: nothing here reaches the network.
    store = open_artifact_store(f"s3://AKIA:{SECRET}@lake/p?endpoint_override=127.0.0.1:9&scheme=http")
    assert SECRET not in store.uri and SECRET not in repr(store)
    assert store.uri_for("models/churn/1") == "s3://AKIA:***@lake/p/models/churn/1"  # what the registry records
    for bad in (f"ftp://u:{SECRET}@h/lake", f"s3://AK:{SECRET}@lake/p?bogus=1"):
        with pytest.raises(InvalidInput) as e:
            open_artifact_store(bad)
        assert SECRET not in str(e.value), str(e.value)


def test_an_unreadable_source_is_named_without_its_credentials():
    from aiinfra.data.sources import resolve_source
    from aiinfra.errors import InvalidInput

    for bad in (f"ftp://u:{SECRET}@h/x.csv", f"s3://AK:{SECRET}@raw/x.csv?bogus=1&secret_key={SECRET}"):
        with pytest.raises(InvalidInput) as e:
            resolve_source(bad)
        assert SECRET not in str(e.value) and "***" in str(e.value), str(e.value)


def test_an_ingest_failure_is_explained_without_credentials():
    from aiinfra.pipelines.ingest import _explain

    uri = f"s3://raw/x.csv?secret_key={SECRET}"
    err = _explain(RuntimeError(f"ray.exceptions.RayTaskError\nOSError: When reading {uri}: access denied"), uri)
    assert SECRET not in err.message and "s3://raw/x.csv?secret_key=***" in err.message


def test_the_cli_prints_errors_without_credentials(tmp_path, monkeypatch, capsys):
    from aiinfra import cli

    monkeypatch.setenv("AIINFRA_HOME", str(tmp_path))
    monkeypatch.setenv("AIINFRA_STORAGE_ROOT", f"ftp://u:{SECRET}@h/lake")
    assert cli.main(["data", "ls"]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "ftp://u:***@h/lake" in err


def test_shown_model_versions_and_runs_hide_credentials(capsys):
    from aiinfra.cli.models import _print_version
    from aiinfra.registry.types import ModelVersion

    v = ModelVersion(name="churn", version=1, status="active", created_at=0.0, created_by="t",
                     artifact_uri=f"s3://AK:{SECRET}@lake/models/churn/1", files={},
                     lineage={"source": f"postgresql://u:{SECRET}@h/db"})
    _print_version(v)
    out = capsys.readouterr().out
    assert SECRET not in out and "s3://AK:***@lake/models/churn/1" in out
