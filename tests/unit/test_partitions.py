"""Partitioned files (``col=value/part-....parquet``): the split, the names readers prune by, the refusals."""

from __future__ import annotations

import datetime as dt
import pickle

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from aiinfra.data.partitions import (
    MAX_PARTITIONS_PER_BATCH,
    NULL_PARTITION,
    check_partition_columns,
    split_by,
)
from aiinfra.errors import InvalidInput
from aiinfra.pipelines.ingest import process_batch


def _table() -> pa.Table:
    return pa.table({
        "plan": ["basic", "pro", None, "a/b c", "basic"],
        "region": pa.array([1, 2, 1, 1, 1], pa.int64()),
        "churn": [True, False, True, False, True],
        "x": [0.5, 1.5, 2.5, 3.5, 4.5],
    })


def test_rows_are_split_by_each_distinct_value_with_hive_names():
    parts = dict(split_by(_table(), ["plan", "region"]))
    assert sorted(parts) == sorted(["plan=a%2Fb%20c/region=1", "plan=basic/region=1", "plan=pro/region=2",
                                    f"plan={NULL_PARTITION}/region=1"])
    assert parts["plan=basic/region=1"].column("x").to_pylist() == [0.5, 4.5]
    assert parts[f"plan={NULL_PARTITION}/region=1"].column("x").to_pylist() == [2.5]
    assert sum(t.num_rows for t in parts.values()) == 5
    assert [d for d, _ in split_by(_table(), ["churn"])] == ["churn=true", "churn=false"]
    assert split_by(_table(), []) == [("", _table())]


def test_columns_that_would_make_a_directory_per_value_are_refused():
    with pytest.raises(InvalidInput, match=r"cannot partition by 'x': its type is double"):
        split_by(_table(), ["x"])
    with pytest.raises(InvalidInput, match=r"cannot partition by 'nope': no such column"):
        check_partition_columns(["nope"], {"plan": "string"})
    with pytest.raises(InvalidInput, match="timestamp"):
        check_partition_columns(["t"], {"t": "timestamp[us]"})
    check_partition_columns(["d", "k"], {"d": "date32[day]", "k": "int64"})
    many = pa.table({"k": list(range(MAX_PARTITIONS_PER_BATCH + 1))})
    with pytest.raises(InvalidInput, match="partition by a coarser column"):
        split_by(many, ["k"])
    dates = pa.table({"d": [dt.date(2026, 1, 1), dt.date(2026, 1, 2)]})
    assert [d for d, _ in split_by(dates, ["d"])] == ["d=2026-01-01", "d=2026-01-02"]


def test_the_gate_writes_a_file_per_partition_that_pyarrow_reads_back_by_directory(tmp_path):
    staged = pickle.loads(process_batch(_table(), storage_root=str(tmp_path), staging="s", spec=None,
                                        partition_by=["plan"]).column("stats")[0].as_py())
    assert staged.error is None and staged.kept == 5
    assert sorted(f.split("/")[0] for f in staged.files) == sorted(["plan=a%2Fb%20c", "plan=basic", "plan=pro",
                                                                   f"plan={NULL_PARTITION}"])
    # The partition column stays in the files; a Hive-partitioned read of the directory prunes by it.
    data = pads.dataset(str(tmp_path / "s" / "data"), format="parquet", partitioning="hive",
                        partition_base_dir=str(tmp_path / "s" / "data"))
    basic = data.to_table(filter=pads.field("region") == 1, columns=["plan", "x"])
    assert sorted(basic.column("x").to_pylist()) == [0.5, 2.5, 3.5, 4.5]
    unpartitioned = pickle.loads(process_batch(_table(), storage_root=str(tmp_path), staging="t", spec=None)
                                 .column("stats")[0].as_py())
    assert len(unpartitioned.files) == 1 and "/" not in unpartitioned.files[0]
    assert unpartitioned.digest == staged.digest  # the same rows: the layout is not the content


def test_duckdb_reads_the_layout_back_with_the_values_decoded(tmp_path):
    import duckdb  # a test extra (the benchmarks' baseline), installed by `make install`
    process_batch(_table(), storage_root=str(tmp_path), staging="s", spec=None, partition_by=["plan"])
    files = f"{tmp_path}/s/data/**/*.parquet"
    counts = duckdb.sql(f"select plan, count(*) from read_parquet('{files}', hive_partitioning=true) group by 1 order by 1")
    assert counts.fetchall() == [("a/b c", 1), ("basic", 2), ("pro", 1), (None, 1)]
