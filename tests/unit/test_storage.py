from __future__ import annotations

import os
import re

import pytest

from aiinfra.errors import ArtifactCorrupted, Conflict, InvalidInput, NotFound
from aiinfra.storage import FileDigest, Migration, open_artifact_store, open_metadata_db, sha256_bytes
from aiinfra.storage.artifacts import LocalArtifactStore

# The store suite: `make test` runs it on SQLite and again on a Postgres server it starts (AIINFRA_TEST_METADATA).
pytestmark = pytest.mark.store


@pytest.fixture
def store(tmp_path):
    return open_artifact_store(str(tmp_path / "root"))


def test_write_read_digest(store, tmp_path):
    d = store.write_bytes("models/m/1/config.json", b'{"a": 1}')
    assert d == FileDigest(sha256_bytes(b'{"a": 1}'), 8)
    assert store.read_bytes("models/m/1/config.json") == b'{"a": 1}'
    assert store.digest("models/m/1/config.json") == d
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))  # spans several hashing chunks
    assert store.write_file("models/m/1/big.bin", src).sha256 == sha256_bytes(src.read_bytes())
    assert store.list_files("models/m/1") == ["big.bin", "config.json"]
    assert isinstance(store, LocalArtifactStore)


def test_compressed_files_are_stored_and_read_as_the_bytes_they_are(store, tmp_path):
    """pyarrow's filesystems decompress .gz / .bz2 / .zst files on reading unless told not to: a registered
    vocab.txt.gz would then fail its own hash check. The store moves bytes, never reinterprets them."""
    import gzip

    data = gzip.compress(b"the vocabulary\n" * 1000)
    digest = store.write_bytes("models/m/1/vocab.txt.gz", data)
    assert store.read_bytes("models/m/1/vocab.txt.gz") == data and digest == store.digest("models/m/1/vocab.txt.gz")
    out = store.fetch_verified("models/m/1", {"vocab.txt.gz": digest}, tmp_path / "out")
    assert (out / "vocab.txt.gz").read_bytes() == data
    store.copy("models/m/1/vocab.txt.gz", "models/m/2/vocab.txt.gz")
    assert store.read_bytes("models/m/2/vocab.txt.gz") == data


def test_fetch_verified_refuses_an_escaping_name_before_creating_anything(store, tmp_path):
    d = store.write_bytes("models/m/1/w.bin", b"w")
    dest = tmp_path / "deep" / "out"
    with pytest.raises(InvalidInput, match="invalid artifact key"):
        store.fetch_verified("models/m/1", {"w.bin": d, "../../escaped/x.bin": d}, dest)
    assert not (tmp_path / "escaped").exists() and not dest.exists()


def test_failed_write_leaves_nothing_visible(store):
    def chunks():
        yield b"half of it"
        raise OSError("disk went away")

    with pytest.raises(OSError):
        store._atomic_write("models/m/1/w.bin", chunks())
    assert not store.exists("models/m/1/w.bin")
    assert store.list_files("models/m/1") == []
    # and no temp file lingers either
    assert os.listdir(store.path("models/m/1")) == []


def test_overwrite_is_atomic_replace(store):
    store.write_bytes("k/a", b"one")
    store.write_bytes("k/a", b"two")
    assert store.read_bytes("k/a") == b"two"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "a/\x00"])
def test_bad_keys_refused(store, key):
    with pytest.raises(InvalidInput):
        store.write_bytes(key, b"x")


def test_fetch_verified_refuses_tampered_and_missing_files(store, tmp_path):
    files = {"w.bin": store.write_bytes("models/m/1/w.bin", b"weights"), "c.json": store.write_bytes("models/m/1/c.json", b"{}")}
    out = store.fetch_verified("models/m/1", files, tmp_path / "out")
    assert (out / "w.bin").read_bytes() == b"weights"

    with open(store.path("models/m/1/w.bin"), "r+b") as f:
        f.write(b"W")
    with pytest.raises(ArtifactCorrupted, match="w.bin"):
        store.fetch_verified("models/m/1", files, tmp_path / "out2")
    assert not (tmp_path / "out2" / "w.bin").exists()

    os.remove(store.path("models/m/1/c.json"))
    with pytest.raises(ArtifactCorrupted, match="c.json.*missing"):
        store.fetch_verified("models/m/1", {"c.json": files["c.json"]}, tmp_path / "out3")


def test_missing_key_is_not_found(store):
    with pytest.raises(NotFound, match="nope"):
        store.read_bytes("nope")


def test_unsupported_scheme(tmp_path):
    with pytest.raises(InvalidInput, match="ftp"):
        open_artifact_store("ftp://host/x")


@pytest.fixture
def s3_root(s3_server):
    return f"s3://lake/aiinfra{s3_server['query']}"


def test_s3_store_round_trip_and_integrity(s3_root, tmp_path):
    store = open_artifact_store(s3_root)
    assert store.uri == "s3://lake/aiinfra"
    files = {"w.bin": store.write_bytes("models/m/1/w.bin", b"weights")}
    assert store.list_files("models/m/1") == ["w.bin"]
    assert store.uri_for("models/m/1/w.bin") == "s3://lake/aiinfra/models/m/1/w.bin"
    out = store.fetch_verified("models/m/1", files, tmp_path / "out")
    assert (out / "w.bin").read_bytes() == b"weights"
    store.write_bytes("models/m/1/w.bin", b"tampered")
    with pytest.raises(ArtifactCorrupted, match="s3://lake/aiinfra/models/m/1/w.bin"):
        store.fetch_verified("models/m/1", files, tmp_path / "out2")


# -- metadata DB ------------------------------------------------------------------------
V1 = Migration(1, ("CREATE TABLE things (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)",))
V2 = Migration(2, ("ALTER TABLE things ADD COLUMN colour TEXT NOT NULL DEFAULT 'blue'",))


@pytest.mark.sqlite_only
def test_sqlite_is_durable_mode(tmp_path):
    db = open_metadata_db(f"sqlite:///{tmp_path}/m.db")
    assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert db.query("PRAGMA synchronous")[0]["synchronous"] == 2  # FULL
    assert db.integrity_check() == "ok"


def test_schema_upgrades_itself_and_keeps_data(metadata_url):
    url = metadata_url
    db = open_metadata_db(url)
    assert db.ensure_schema("things", [V1]) == 1
    with db.transaction() as tx:
        tx.execute("INSERT INTO things (name) VALUES (?)", ("a",))
    db.close()

    db = open_metadata_db(url)  # a newer aiinfra opens the old file
    assert db.ensure_schema("things", [V1, V2]) == 2
    assert db.query("SELECT name, colour FROM things") == [{"name": "a", "colour": "blue"}]
    assert db.ensure_schema("things", [V1, V2]) == 2  # idempotent
    # an older aiinfra refuses a newer schema instead of corrupting it
    with pytest.raises(Conflict, match="upgrade aiinfra"):
        db.ensure_schema("things", [V1])


def test_transaction_rolls_back_on_error(metadata_url):
    db = open_metadata_db(metadata_url)
    db.ensure_schema("things", [V1])
    with pytest.raises(RuntimeError):
        with db.transaction() as tx:
            tx.execute("INSERT INTO things (name) VALUES (?)", ("a",))
            raise RuntimeError("boom")
    assert db.query("SELECT COUNT(*) AS n FROM things")[0]["n"] == 0


def test_unsupported_db_url():
    with pytest.raises(InvalidInput, match="sqlite:// and postgresql://"):
        open_metadata_db("mysql://x/y")


def test_an_s3_root_is_shown_without_its_options_and_reopened_with_them():
    store = open_artifact_store("s3://lake/aiinfra?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1")
    assert store.uri_for("staging/x") == "s3://lake/aiinfra/staging/x"  # what rows and messages show
    assert store.openable_uri_for("staging/x") == (
        "s3://lake/aiinfra/staging/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1")


@pytest.mark.sqlite_only
def test_a_service_that_expects_the_db_refuses_to_start_on_an_empty_one(tmp_path):
    """A node without the platform's SQLite file (another machine's disk) gets a 503 saying what to configure."""
    from aiinfra.errors import ServiceUnavailable

    url = f"sqlite:///{tmp_path}/elsewhere/metadata.db"
    with pytest.raises(ServiceUnavailable, match=re.escape("metadata: {type: postgresql")) as err:
        open_metadata_db(url, create=False)
    assert "no metadata DB at" in str(err.value)
    assert not (tmp_path / "elsewhere" / "metadata.db").exists()  # nothing created on the way
    open_metadata_db(url).close()  # what sets the platform up creates it
    open_metadata_db(url, create=False).close()  # and then every service finds it
