"""``aiinfra data``: ingest, list, show and compare datasets."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from aiinfra.cli.common import print_json, when
from aiinfra.config import load_config
from aiinfra.redaction import redact_uri


def _catalog(config: Any) -> Any:
    from aiinfra.data.catalog import DatasetCatalog
    from aiinfra.storage import DigestLedger, open_artifact_store

    # Read as the pipelines read: a manifest that does not match the metadata DB's record is refused.
    return DatasetCatalog(open_artifact_store(config.storage_root), ledger=DigestLedger.at(config.metadata_url))


def _data_ingest(args: argparse.Namespace) -> None:
    from aiinfra.data.spec import load_spec
    from aiinfra.pipelines.ingest import ingest
    from aiinfra.platform import connect
    from aiinfra.registry.client import default_principal

    config = load_config()
    spec = load_spec(args.spec) if args.spec else None  # a bad spec fails before Ray starts
    last = [0.0]

    def progress(stats: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            print(f"  {stats.rows_in:,} rows read, {stats.kept:,} kept, {stats.quarantined:,} quarantined", file=sys.stderr, flush=True)

    print(f"ingesting {redact_uri(args.uri)} as {args.name} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with connect(config):
        result = ingest(config, args.name, args.uri, spec=spec, who=default_principal(), progress=progress)
    v = result.version
    print(
        f"{'created' if result.created else 'unchanged (same content)'}: {v.ref}: {v.row_count:,} rows kept, "
        f"{v.quarantined_count:,} quarantined in {time.monotonic() - t0:.1f}s", file=sys.stderr,
    )
    for reason, count in v.quarantine_reasons.items():
        print(f"  quarantined {count:,}: {reason}", file=sys.stderr)
    if args.json:
        return print_json({"created": result.created, **v.model_dump(mode="json", by_alias=True, exclude={"profile"})})
    print(v.version)


def _data_example(args: argparse.Namespace) -> None:
    """Ingest one of the bundled example datasets, so the example configs have data to train on."""
    import tempfile
    from pathlib import Path

    from aiinfra.data.synthetic import EXAMPLES
    from aiinfra.demo.configs import example_config

    # The demo's validation rules come with its data: jobs/configs/customers_spec.yaml, the file a user
    # would pass to `aiinfra data ingest --spec`. Looked up first, so a missing file fails before any work.
    spec = str(example_config("customers_spec.yaml")) if args.name == "customers" else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.name}.csv"
        EXAMPLES[args.name]().to_csv(path, index=False)
        args.uri, args.spec = str(path), spec
        _data_ingest(args)


def _data_ls(args: argparse.Namespace) -> None:
    catalog = _catalog(load_config())
    rows = []
    for name in catalog.names():
        versions = catalog.versions(name)
        latest = versions[-1]
        rows.append({"name": name, "versions": len(versions), "latest": latest.version, "rows": latest.row_count,
                     "quarantined": latest.quarantined_count, "created_at": latest.created_at})
    if args.json:
        return print_json(rows)
    if not rows:
        print("no datasets yet; `aiinfra data ingest NAME URI` adds one")
        return
    print(f"{'NAME':<24} {'LATEST':<16} {'VERSIONS':>8} {'ROWS':>12} {'QUARANTINED':>11}  CREATED")
    for r in rows:
        print(f"{r['name']:<24} {r['latest']:<16} {r['versions']:>8} {r['rows']:>12,} {r['quarantined']:>11,}  {when(r['created_at'])}")


def _data_show(args: argparse.Namespace) -> None:
    v = _catalog(load_config()).get(args.ref)
    if args.json:
        return print_json(v.model_dump(mode="json", by_alias=True))
    print(f"{v.ref}  ({v.row_count:,} rows; {v.quarantined_count:,} of {v.rows_in:,} quarantined)")
    print(f"  created   {when(v.created_at)} by {v.created_by}")
    print(f"  source    {v.source_uri} ({v.source_format})")
    print(f"  parent    {v.parent_version or '-'}; spec {v.spec_hash or 'none'}")
    if v.partition_by:
        print(f"  files     {len(v.files):,}, partitioned by {', '.join(v.partition_by)} (col=value/ directories)")
    for reason, count in v.quarantine_reasons.items():
        print(f"  quarantined {count:,}: {reason}")
    print("  columns:")
    for col in v.schema_:
        p = v.profile.columns.get(col["name"])
        if p is None:
            continue
        if p.mean is not None:
            q = p.quantiles or {}
            detail = (f"mean {p.mean:.4g} std {p.std:.4g} min {p.min:.4g} p50 {q.get('p50', float('nan')):.4g} "
                      f"max {p.max:.4g}")
        elif p.top is not None:
            detail = f"{p.distinct} distinct; top " + ", ".join(f"{k} ({c:,})" for k, c in p.top[:5])
        else:
            detail = ""
        print(f"    {col['name']:<20} {col['type']:<14} nulls {p.nulls:<8,} {detail}")


def _data_diff(args: argparse.Namespace) -> None:
    diff = _catalog(load_config()).diff(args.a, args.b)
    if args.json:
        return print_json(diff)
    print(f"{diff['a']} -> {diff['b']}")
    s = diff["schema"]
    print(f"  schema: added {s['added'] or '-'}, removed {s['removed'] or '-'}, type changed {s['type_changed'] or '-'}")
    rows = diff["profile"]["row_count"]
    print(f"  rows: {rows[0]:,} -> {rows[1]:,}")
    for col, change in diff["profile"]["columns"].items():
        print(f"  {col}: " + "; ".join(f"{k} {v}" for k, v in change.items()))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets: ingest, list, show, compare").add_subparsers(dest="data_command", required=True)
    ingest = data.add_parser("ingest", help="validate, quarantine, profile and version URI as dataset NAME; prints the version id")
    ingest.add_argument("name")
    ingest.add_argument("uri", help="a CSV, Parquet or JSON lines file or directory; local, s3:// or gs://")
    ingest.add_argument("--spec", help="validation spec YAML (column types, bounds, allowed values, key, thresholds)")
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(func=_data_ingest)
    dex = data.add_parser("example", help="ingest a bundled example dataset (customers: the demo's; digits: 8x8 images; "
                                          "breast_cancer, diabetes, wine: scikit-learn's tables)")
    dex.add_argument("name", choices=["customers", "digits", "breast_cancer", "diabetes", "wine"])
    dex.add_argument("--json", action="store_true")
    dex.set_defaults(func=_data_example)
    dls = data.add_parser("ls", help="datasets with their latest version")
    dls.add_argument("--json", action="store_true")
    dls.set_defaults(func=_data_ls)
    dshow = data.add_parser("show", help="schema, profile and lineage of NAME (latest) or NAME@VERSION")
    dshow.add_argument("ref")
    dshow.add_argument("--json", action="store_true")
    dshow.set_defaults(func=_data_show)
    ddiff = data.add_parser("diff", help="schema and profile differences between NAME@A and NAME@B")
    ddiff.add_argument("a")
    ddiff.add_argument("b")
    ddiff.add_argument("--json", action="store_true")
    ddiff.set_defaults(func=_data_diff)
