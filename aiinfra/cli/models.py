"""``aiinfra models``: the model registry."""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiinfra.cli import common
from aiinfra.cli.common import open_platform, print_json, stage_log, when
from aiinfra.config import load_config
from aiinfra.errors import InvalidInput
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


def _models_import(args: argparse.Namespace) -> None:
    from aiinfra.config import validate_as
    from aiinfra.pipelines.model_import import import_onnx
    from aiinfra.training.gate import GateConfig

    gate = None
    if args.gate_metric:
        gate = validate_as(GateConfig, {"metric": args.gate_metric, "min_improvement": args.min_improvement}, "gate")
    log = stage_log()
    log.total = 4
    with open_platform(load_config()) as p:
        out = import_onnx(p, args.name, args.path, args.signature, holdout=args.holdout, label=args.label,
                          slices=args.slice, gate=gate, log=log)
    if args.json:
        return print_json(out.to_dict())
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in out.metrics.items())
    print(f"{out.model}: {metrics}; gate {'PASS' if out.verdict['passed'] else 'FAIL'}: {out.verdict['reason']}")
    print(f"alias: {out.alias or 'none (set one with `aiinfra models alias`)'}")


# -- protected aliases -------------------------------------------------------------------------------------
def _api_token(args: argparse.Namespace) -> str | None:
    """The API token given (``--token-file``, else AIINFRA_API_TOKEN), if any. The registry checks it (and, to
    approve, its role and scope) where the alias moves, and its audit log names the token."""
    import os

    from aiinfra.config import ENV

    if getattr(args, "token_file", None):
        try:
            return open(args.token_file).read().strip() or None  # noqa: SIM115 - read once
        except OSError as e:
            raise InvalidInput(f"cannot read --token-file {args.token_file}: {e.strerror}") from None
    return os.environ.get(ENV.API_TOKEN.name) or None


def _print_request(r: Any) -> None:
    approvals = ", ".join(f"{a.who} ({a.person})" if a.person else a.who for a in r.approvals) or "none yet"
    print(f"{r.id}  {r.model}@{r.version} -> {r.alias}  {r.status}  {len(r.approvals)}/{r.needed} approvals ({approvals})")
    print(f"    requested by {r.requested_by} at {when(r.created_at)}, expires {when(r.expires_at)}"
          + (f"; {r.reason}" if r.reason else "") + (f"; decided by {r.decided_by}" if r.decided_by else ""))


def _models_policy(args: argparse.Namespace) -> None:
    from aiinfra.config import read_yaml

    with open_platform(load_config()) as p:
        policy = p.registry.with_token(_api_token(args)).set_policy(args.name, read_yaml(args.file, "alias policy")) \
            if args.file \
            else p.registry.get_policy(args.name)
    if args.json:
        return print_json(policy.model_dump(mode="json"))
    if not policy.aliases:
        print(f"{args.name}: no protected aliases (set some with `aiinfra models policy {args.name} FILE.yaml`)")
    for alias, rule in policy.aliases.items():
        print(f"{args.name}@{alias}: {rule.approvals} approval(s) within {rule.expires / 3600:g} h"
              + ("; the requester's own counts" if rule.self_approval else "; not from the requester")
            + ("; one per person (tokens made with --for)" if rule.distinct_people else ""))


def _models_request(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        request = p.registry.with_token(_api_token(args)).request_alias(args.name, args.version, args.alias, reason=args.reason)
    if args.json:
        return print_json(request.model_dump(mode="json"))
    _print_request(request)


def _models_requests(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        requests = p.registry.list_requests(args.name, pending_only=not args.all)
    if args.json:
        return print_json([r.model_dump(mode="json") for r in requests])
    if not requests:
        print(f"{args.name}: no {'' if args.all else 'pending '}alias requests")
    for r in requests:
        _print_request(r)


def _models_decide(args: argparse.Namespace) -> None:
    config = load_config()
    with open_platform(config) as p:
        registry = p.registry.with_token(_api_token(args))
        request = registry.approve(args.request_id) if args.decision == "approve" else \
            registry.refuse(args.request_id, reason=args.reason)
        if request.status == "applied" and request.alias == "champion" and common.cluster_running(config):
            # The monitor compares traffic with the champion's reference: the new champion's, from now on.
            from aiinfra.monitoring.client import MonitorClient

            monitor = MonitorClient.if_running(config, request.model)
            if monitor is not None:
                monitor.rebase()
    if args.json:
        return print_json(request.model_dump(mode="json"))
    _print_request(request)
    if request.status == "applied":
        print(f"{request.model}@{request.alias} -> {request.version}")


def _print_variant(out: Any) -> None:
    print(f"{out.model or out.directory}: {out.method} of {out.parent}, checked on {out.rows:,} holdout rows: "
          f"{out.metric} {out.variant_metric:.4f} (parent {out.parent_metric:.4f}), largest score difference "
          f"{out.max_abs_difference:.2e}")
    print(f"  size {out.parent_bytes:,} B -> {out.variant_bytes:,} B ({out.variant_bytes / out.parent_bytes:.2f}x); "
          f"single-row predict {out.parent_latency_ms:.3f} ms -> {out.variant_latency_ms:.3f} ms")


def _models_export(args: argparse.Namespace) -> None:
    from aiinfra.pipelines.variants import export_version

    _run_variant(args, 4 if args.register else 3,
                 lambda p, log: export_version(p, args.ref, out=args.out, register=args.register, log=log))


def _run_variant(args: argparse.Namespace, stages: int, make: Any) -> None:
    """``make(platform, log)`` on the configured platform, its outcome printed (or as JSON)."""
    log = stage_log()
    log.total = stages
    with open_platform(load_config()) as p:
        out = make(p, log)
    if args.json:
        return print_json(out.to_dict())
    _print_variant(out)


def _optimize(args: argparse.Namespace) -> None:
    from aiinfra.pipelines.variants import optimize_version

    student = None
    if args.student is not None:
        try:
            student = json.loads(args.student)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"--student must be a JSON object like '{{\"hidden\": [16]}}': {e}") from None
        if not isinstance(student, dict):
            raise InvalidInput("--student must be a JSON object of the student's hyperparameters (and optionally family)")
    _run_variant(args, 4, lambda p, log: optimize_version(
        p, args.ref, quantize=args.quantize, distill=args.distill, student=student, prune=args.prune, alpha=args.alpha,
        max_loss=args.max_loss, metric=args.metric, log=log))


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
    policy = models.add_parser("policy", help="show NAME's protected aliases, or set them from a YAML file",
                               description="Protected aliases move only by approved requests. FILE holds, e.g., "
                                           "'aliases: {champion: {approvals: 2, expires: 24h}}' (self_approval: true lets "
                                           "the requester's own approval count; distinct_people: true counts approvals "
                                           "by person); an empty 'aliases: {}' removes them. Changing or removing a "
                                           "protection that exists takes an admin token.")
    policy.add_argument("name")
    policy.add_argument("file", nargs="?")
    policy.add_argument("--token-file", help="an admin token, to change or lift a protection that exists "
                                             "(default: AIINFRA_API_TOKEN)")
    policy.add_argument("--json", action="store_true")
    policy.set_defaults(func=_models_policy)
    request = models.add_parser("request", help="ask to point a protected ALIAS at VERSION (approvers approve it)")
    request.add_argument("name")
    request.add_argument("version", type=int)
    request.add_argument("alias")
    request.add_argument("--reason", default="")
    request.add_argument("--token-file", help="request as this API token (default: AIINFRA_API_TOKEN, else this user)")
    request.add_argument("--json", action="store_true")
    request.set_defaults(func=_models_request)
    requests = models.add_parser("requests", help="NAME's pending alias requests (--all: every one)")
    requests.add_argument("name")
    requests.add_argument("--all", action="store_true")
    requests.add_argument("--json", action="store_true")
    requests.set_defaults(func=_models_requests)
    for decision in ("approve", "refuse"):
        decide = models.add_parser(decision, help=f"{decision} an alias request, with an approver (or admin) token")
        decide.add_argument("request_id")
        if decision == "refuse":
            decide.add_argument("--reason", default="")
        decide.add_argument("--token-file", help="the approver's API token (default: AIINFRA_API_TOKEN)")
        decide.add_argument("--json", action="store_true")
        decide.set_defaults(func=_models_decide, decision=decision)
    imp = models.add_parser("import", help="register an ONNX model trained elsewhere, scored and gated on your holdout",
                            description="Register PATH (an .onnx graph over one (rows, inputs) float tensor, or with one input per "
                                        "column) as the next "
                                        "version of NAME. It is checked against the signature file, scored on the "
                                        "holdout dataset, gated against NAME@champion on the same rows, and then served, "
                                        "batch-scored and monitored like a model trained here.")
    imp.add_argument("name")
    imp.add_argument("path", help="the .onnx file")
    imp.add_argument("--signature", required=True, help="YAML/JSON: task, class_labels, inputs (the graph's columns in "
                                                         "order), optionally output and scores")
    imp.add_argument("--holdout", required=True, help="the labelled dataset to score it on: DATASET or DATASET@VERSION")
    imp.add_argument("--label", required=True, help="the holdout's label column")
    imp.add_argument("--slice", action="append", default=[], help="a column to report (and gate) per value; repeatable")
    imp.add_argument("--gate-metric", help="the gate's metric (default: roc_auc, accuracy or rmse by task)")
    imp.add_argument("--min-improvement", type=float, default=0.0,
                     help="how much better than the champion it must be (negative tolerates a loss)")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=_models_import)
    export = models.add_parser("export", help="a version as an ONNX model, checked to answer as the original does",
                               description="Export NAME@VERSION (a torch or tree model) to ONNX over its preprocessed "
                                           "inputs; its answers on the version's holdout rows must match the "
                                           "original's within 1e-4. Written to --out as a model directory "
                                           "(model.onnx, model.json, preprocess.json) and/or registered as the "
                                           "next version with --register.")
    export.add_argument("ref", help="NAME@VERSION or NAME@ALIAS")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--out", help="a new (or empty) directory to write the exported model directory to")
    export.add_argument("--register", action="store_true", help="register the export as the next version of NAME")
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=_models_export)
    optimize = sub.add_parser("optimize", help="a compressed variant of a version, registered when it passes a gate",
                              description="Make a smaller variant of NAME@VERSION, judge it on the version's holdout "
                                          "rows, and register it as the next version only when it loses at most "
                                          "--max-loss of the metric; its size and single-row latency are measured "
                                          "against the parent. One method: --quantize int8 (onnxruntime's dynamic "
                                          "quantization of its ONNX form), --distill (a smaller student trained on the "
                                          "parent's answers on its training rows) or --prune AMOUNT (that share of a "
                                          "tabular_mlp's hidden neurons removed, then fine-tuned).")
    optimize.add_argument("ref", help="NAME@VERSION or NAME@ALIAS")
    method = optimize.add_mutually_exclusive_group(required=True)
    method.add_argument("--quantize", choices=["int8"])
    method.add_argument("--distill", action="store_true")
    method.add_argument("--prune", type=float, metavar="AMOUNT", help="the share of hidden neurons to remove, e.g. 0.5")
    optimize.add_argument("--student", help='--distill: the student as JSON, e.g. \'{"hidden": [16]}\' or '
                                            '\'{"family": "tabular_mlp", "hidden": [32, 16]}\' (default: half the widths)')
    optimize.add_argument("--alpha", type=float, default=0.5, help="--distill: the teacher's weight against the true labels")
    optimize.add_argument("--max-loss", type=float, help="default: 0.01 of AUC or accuracy, 1%% of the RMSE")
    optimize.add_argument("--metric", help="default: roc_auc, accuracy or rmse by task")
    optimize.add_argument("--json", action="store_true")
    optimize.set_defaults(func=_optimize)
