"""``aiinfra models``: the model registry."""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiinfra.cli.common import open_platform, print_json, when
from aiinfra.config import load_config
from aiinfra.redaction import redact_text, redact_uri


def _models_ls(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        models = p.registry.list_models()
    if args.json:
        return print_json([m.model_dump(mode="json") for m in models])
    if not models:
        print("no models registered yet; `aiinfra demo` registers one")
        return
    print(f"{'NAME':<24} {'LATEST':>6} {'VERSIONS':>8}  ALIASES")
    for m in models:
        aliases = ", ".join(f"{a}->{v}" for a, v in m.aliases.items()) or "-"
        print(f"{m.name:<24} {m.latest_version or '-':>6} {m.version_count:>8}  {aliases}")


def _models_show(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        if "@" in args.ref:
            version = p.registry.get(args.ref)
            if args.json:
                return print_json(version.model_dump(mode="json"))
            _print_version(version)
            return
        versions = p.registry.list_versions(args.ref)
    if args.json:
        return print_json({"name": args.ref, "versions": [v.model_dump(mode="json") for v in versions]})
    print(f"model {args.ref}: {len(versions)} version(s)")
    print(f"{'VERSION':>7}  {'STATUS':<8} {'CREATED':<19}  {'ALIASES':<20} METRICS")
    for v in versions:
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        print(f"{v.version:>7}  {v.status:<8} {when(v.created_at):<19}  {', '.join(v.aliases) or '-':<20} {metrics}")


def _print_version(v: Any) -> None:
    print(f"{v.ref}  ({v.status}; aliases: {', '.join(v.aliases) or 'none'})")
    print(f"  created     {when(v.created_at)} by {v.created_by}")
    print(f"  artifacts   {redact_uri(v.artifact_uri)}")
    for rel, d in sorted(v.files.items()):
        print(f"    {rel:<28} {d.size:>10} B  sha256 {d.sha256[:16]}...")
    if v.metrics:
        print("  metrics     " + ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items())))
    if v.params:
        print("  params      " + json.dumps(v.params, sort_keys=True))
    lineage = {k: val for k, val in v.lineage.model_dump().items() if val is not None}
    print("  lineage     " + (redact_text(", ".join(f"{k}={val}" for k, val in lineage.items())) or "none recorded"))
    if v.signature:
        ins = ", ".join(f"{f.name}:{f.dtype}" for f in v.signature.inputs)
        outs = ", ".join(f"{f.name}:{f.dtype}" for f in v.signature.outputs)
        print(f"  signature   ({ins}) -> ({outs})")


def _models_alias(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        version = p.registry.set_alias(args.name, args.version, args.alias)
    if args.json:
        return print_json(version.model_dump(mode="json"))
    print(f"{args.name}@{args.alias} -> {version.ref}")


def _models_archive(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        version = p.registry.archive(args.name, args.version, reason=args.reason)
    print(f"{version.ref} is {version.status}")


def _models_audit(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        entries = p.registry.audit(args.name)
        check = p.registry.verify_audit(args.name) if args.verify else None
    if check is not None:
        if args.json:
            print_json(check)
        elif check["intact"]:
            print(f"audit log of {args.name}: {check['rows']} rows, hash chain intact")
        else:
            print(f"audit log of {args.name}: hash chain BROKEN at row {check['first_broken']}: {check['reason']}")
        if not check["intact"]:
            raise SystemExit(1)
        return None
    if args.json:
        return print_json([e.model_dump(mode="json") for e in entries])
    for e in entries:
        change = f"{json.dumps(e.before) if e.before else '-'} -> {json.dumps(e.after) if e.after else '-'}"
        print(f"{when(e.ts)}  {e.who:<24} {e.action:<12} v{e.version or '-':<4} {change}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_command", required=True)
    ls = models.add_parser("ls", help="list models with their latest version and aliases")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_models_ls)
    show = models.add_parser("show", help="NAME lists its versions; NAME@VERSION or NAME@ALIAS shows one")
    show.add_argument("ref")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_models_show)
    alias = models.add_parser("alias", help="point ALIAS (champion, challenger, ...) at VERSION")
    alias.add_argument("name")
    alias.add_argument("version", type=int)
    alias.add_argument("alias")
    alias.add_argument("--json", action="store_true")
    alias.set_defaults(func=_models_alias)
    archive = models.add_parser("archive", help="archive a version (kept, never deleted)")
    archive.add_argument("name")
    archive.add_argument("version", type=int)
    archive.add_argument("--reason", default="")
    archive.set_defaults(func=_models_archive)
    audit = models.add_parser("audit", help="every change to a model: who, when, before and after")
    audit.add_argument("name")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--verify", action="store_true",
                       help="check the log's hash chain instead: exit 1 and name the first broken row if it is not intact")
    audit.set_defaults(func=_models_audit)
