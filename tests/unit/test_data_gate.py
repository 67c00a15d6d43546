"""The ingestion gate's pieces without Ray: spec, validation, profiles, content ids, catalog, one batch end to end."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from aiinfra.data.catalog import DatasetCatalog, parse_dataset_ref
from aiinfra.data.profile import finalize, profile_batch
from aiinfra.data.spec import ValidationSpec, load_spec
from aiinfra.data.validation import REASON_COLUMN, validate_batch
from aiinfra.data.versioning import content_digest, row_hashes, version_id
from aiinfra.errors import InvalidInput, NotFound
from aiinfra.pipelines.ingest import BatchStats, process_batch
from aiinfra.storage import open_artifact_store

SPEC = ValidationSpec.model_validate({
    "columns": {
        "id": {"type": "int64"},
        "x": {"type": "float64", "min": 0, "max": 10},
        "plan": {"type": "string", "allowed": ["a", "b"]},
        "email": {"type": "string", "nullable": True, "regex": "[^@]+@[^@]+"},
        "ts": {"type": "timestamp"},
    },
    "key": ["id"],
    "max_bad_fraction": 0.5,
})


def raw_batch() -> pa.Table:
    return pa.table({
        "id": ["1", "2", "x", "4", "5", "6"],
        "x": ["1.5", "20", "3", "", "2", "-1"],
        "plan": ["a", "b", "a", "c", "a", "b"],
        "email": ["a@b", None, "nope", "q@r", "z@z", "k@l"],
        "ts": ["2026-01-01T00:00:00", "2026-01-02", "2026-01-03", "2026-01-04", "bad", "2026-01-06"],
        "path": ["/data/f.csv"] * 6,
    })


def test_spec_names_every_bad_field(tmp_path):
    f = tmp_path / "spec.yaml"
    f.write_text("columns:\n  a: {type: float128}\n  b: {type: string, min: 3}\nmax_bad_fraction: 2\nkey: [zz]\nbogus: 1\n")
    with pytest.raises(InvalidInput) as exc:
        load_spec(f)
    msg = str(exc.value)
    for needle in ("columns.a.type", "columns.b", "max_bad_fraction", "bogus"):
        assert needle in msg, msg
    with pytest.raises(InvalidInput, match="does not compile"):
        load_spec(_write(tmp_path, "columns:\n  a: {type: string, regex: '('}\n"))


def _write(tmp_path, text):
    f = tmp_path / "s2.yaml"
    f.write_text(text)
    return f


def test_validation_quarantines_rows_with_their_first_reason():
    r = validate_batch(raw_batch(), SPEC)
    assert r.good.num_rows + r.bad.num_rows == 6  # rows in = kept + quarantined
    assert r.good.column("id").to_pylist() == [1]
    assert r.good.schema.field("ts").type == pa.timestamp("us") and r.good.schema.field("x").type == pa.float64()
    reasons = dict(zip(r.bad.column("id").to_pylist(), r.bad.column(REASON_COLUMN).to_pylist()))
    assert reasons == {
        "2": "x: above max 10", "x": "id: not a valid int64", "4": "x: null",
        "5": "ts: not a valid timestamp", "6": "x: below min 0",
    }
    assert sum(r.reasons.values()) == 5
    assert r.bad.column("path").to_pylist() == ["/data/f.csv"] * 5  # quarantine names the file


def test_missing_column_names_file_and_column():
    with pytest.raises(InvalidInput, match=r"/data/f.csv: missing column\(s\) email"):
        validate_batch(raw_batch().drop_columns(["email"]), SPEC)


def test_profile_merges_to_the_whole():
    rng = np.random.default_rng(0)
    t = pa.table({"v": rng.normal(5, 2, 10_000), "c": rng.choice(["a", "b", "c"], 10_000)})
    h1, _ = row_hashes(t)
    whole = finalize(profile_batch(t, h1), t.schema)
    parts = [t.slice(i, 1_000) for i in range(0, 10_000, 1_000)]
    merged = profile_batch(parts[0], row_hashes(parts[0])[0])
    for p in reversed(parts[1:]):
        merged = merged.merge(profile_batch(p, row_hashes(p)[0]))
    m = finalize(merged, t.schema)
    assert m.columns["v"].mean == pytest.approx(whole.columns["v"].mean)
    assert m.columns["v"].std == pytest.approx(whole.columns["v"].std)
    assert m.columns["v"].quantiles == whole.columns["v"].quantiles  # the same content sample
    assert m.columns["c"].top == whole.columns["c"].top
    assert m.row_count == 10_000 and m.sample_rows == 10_000


def test_version_id_ignores_order_and_partitioning():
    t = pa.table({"b": pa.array([1, None, 3, 4], pa.int64()), "a": ["x", "y", None, "w"]})
    shuffled = t.take([3, 1, 0, 2])

    def vid(*parts):
        d = content_digest(*row_hashes(parts[0]))
        for p in parts[1:]:
            d = d.merge(content_digest(*row_hashes(p)))
        return version_id(t.schema, d)

    assert vid(t) == vid(shuffled.slice(0, 1), shuffled.slice(1)) == vid(t.slice(0, 2), t.slice(2))
    assert vid(t) != vid(t.slice(1))
    changed = pa.table({"b": pa.array([1, None, 3, 5], pa.int64()), "a": ["x", "y", None, "w"]})
    assert vid(t) != vid(changed)


def test_one_batch_through_the_gate_and_into_the_catalog(tmp_path):
    root = str(tmp_path / "lake")
    out = process_batch(raw_batch(), storage_root=root, staging="staging/s1", spec=SPEC)
    stats: BatchStats = pickle.loads(out.column("stats")[0].as_py())
    assert (stats.rows_in, stats.kept, stats.quarantined) == (6, 1, 5)
    assert len(stats.files) == 1 and len(stats.quarantine_files) == 1
    # the duplicate-key pass moves rows whose key repeats elsewhere to quarantine
    out = process_batch(raw_batch(), storage_root=root, staging="staging/s2", spec=SPEC, duplicate_keys={(1,)})
    dup: BatchStats = pickle.loads(out.column("stats")[0].as_py())
    assert (dup.kept, dup.quarantined, dup.reasons["id: duplicate key"]) == (0, 6, 1)


def test_catalog_refs(tmp_path):
    catalog = DatasetCatalog(open_artifact_store(str(tmp_path)), ledger=None)
    with pytest.raises(NotFound, match="no versions"):
        catalog.get("customers")
    with pytest.raises(InvalidInput):
        parse_dataset_ref("customers@NOT-HEX")
    with pytest.raises(InvalidInput):
        parse_dataset_ref("../x@abcd")
