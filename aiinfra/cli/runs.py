"""``aiinfra reproduce`` and ``aiinfra runs``: experiment runs, their comparison and reproduction."""

from __future__ import annotations

import argparse
from typing import Any

from aiinfra.cli.common import open_platform, print_json, stage_log, when
from aiinfra.config import load_config
from aiinfra.provenance import describe_change
from aiinfra.redaction import redact_text, redact_uri


def _reproduce(args: argparse.Namespace) -> int:
    # Inside: torch and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.pipelines.train import reproduce
    from aiinfra.platform import connect

    with connect(load_config()) as platform:
        result = reproduce(platform, args.ref, tolerance=args.tolerance, log=stage_log())
    if args.json:
        print_json(result)
    else:
        print(f"{result['model']} rebuilt as run {result['run_id']} (original run {result['original_run_id']})")
        print(f"  config hash {'matches' if result['config_hash'] == result['original_config_hash'] else 'DIFFERS'}")
        _print_environment(result)
        for name, m in result["metrics"].items():
            diff = "-" if m["difference"] is None else f"{m['difference']:+.4f}"
            reproduced = "-" if m["reproduced"] is None else f"{m['reproduced']:.4f}"
            print(f"  {name:<14} registered {m['registered']:.4f}  reproduced {reproduced}  difference {diff}")
        verdict = "within" if result["within_tolerance"] else "OUTSIDE"
        print(f"  largest difference {result['max_abs_difference']}: {verdict} the tolerance {result['tolerance']}")
    return 0 if result["within_tolerance"] else 1


def _print_environment(result: dict[str, Any]) -> None:
    """Told, never fatal: a new numpy may explain a metric that moved, but does not make it wrong."""
    changes = result["environment"]["changes"]
    if changes is None:
        print(f"  environment not recorded with {result['model']} (registered before environments were)")
    elif not changes:
        print("  environment matches the recorded one")
    else:
        print(f"  environment DIFFERS from the recorded one in {len(changes)} place(s):")
        for change in changes:
            print(f"    {describe_change(change)}")


def _runs_ls(args: argparse.Namespace) -> None:
    filters = {k: v for k, v in {"experiment": args.experiment, "status": args.status, "kind": args.kind,
                                  "parent_run_id": args.parent}.items() if v}
    with open_platform(load_config()) as p:
        runs = p.registry.list_runs(limit=args.limit, **filters)
    if args.json:
        return print_json([r.model_dump(mode="json") for r in runs])
    if not runs:
        print("no runs yet; `aiinfra train jobs/configs/churn.yaml` makes one")
        return
    print(f"{'RUN':<30} {'EXPERIMENT':<16} {'KIND':<9} {'STATUS':<9} {'STARTED':<19} {'SECONDS':>8}  METRICS")
    for r in runs:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())[:4])
        secs = f"{r.duration_s:.1f}" if r.duration_s is not None else "-"
        print(f"{r.run_id:<30} {r.experiment:<16} {r.kind:<9} {r.status:<9} {when(r.started_at):<19} {secs:>8}  {metrics}")


def _runs_show(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        r = p.registry.get_run(args.run)
    if args.json:
        return print_json(r.model_dump(mode="json"))
    print(f"{r.run_id}  ({r.kind} in experiment {r.experiment}; {r.status})")
    print(f"  started     {when(r.started_at)} by {r.created_by}" + (f"; ended {when(r.ended_at)}" if r.ended_at else ""))
    if r.parent_run_id:
        print(f"  parent      {r.parent_run_id}")
    print(f"  data        {', '.join(r.dataset_versions) or '-'}")
    print(f"  code        {r.code_version.get('version', '-')}; config {r.config_hash or '-'}; seed {r.seed}")
    if r.cpu_seconds is not None:
        print(f"  resources   {r.cpu_seconds:.1f} CPU-s, {r.gpu_seconds or 0:.1f} GPU-s")
    if r.metrics:
        print("  metrics     " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())))
    for name, uri in r.artifacts.items():
        print(f"  artifact    {name}: {redact_uri(uri)}")
    if r.error:
        print(f"  error       {redact_text(r.error)}")
    if r.epochs:
        keys = [k for k in ("train_loss", "val_loss", "epoch_time_s") if any(k in e.metrics for e in r.epochs)]
        print("  epochs      " + "  ".join(f"{k:>12}" for k in ["step", *keys]))
        for e in r.epochs:
            print("              " + "  ".join([f"{e.step:>12}", *(f"{e.metrics.get(k, float('nan')):>12.4f}" for k in keys)]))


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)[:30]


def _runs_compare(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        diff = p.registry.compare_runs(args.a, args.b)
    if args.json:
        return print_json(diff)
    a, b = diff["runs"]
    print(f"{'':<28} {a:<30} {b:<30}")
    for section in ("config_hash", "seed", "dataset_versions", "code_version"):
        d = diff[section]
        print(f"{section:<28} {str(d['a'])[:30]:<30} {str(d['b'])[:30]:<30} {'' if d['same'] else '<- differs'}")
    for key, d in sorted(diff["params"].items()):
        if not d["same"]:
            print(f"param {key:<22} {str(d['a'])[:30]:<30} {str(d['b'])[:30]:<30} <- differs")
    for key, d in sorted(diff["metrics"].items()):
        delta = "" if d["delta"] is None else f"{d['delta']:+.4g}"
        print(f"metric {key:<21} {_num(d['a']):<30} {_num(d['b']):<30} {delta}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    repro = sub.add_parser("reproduce", help="rebuild NAME@VERSION from its recorded recipe and data; compare metrics")
    repro.add_argument("ref")
    repro.add_argument("--tolerance", type=float, default=0.02, help="largest absolute metric difference accepted")
    repro.add_argument("--json", action="store_true")
    repro.set_defaults(func=_reproduce)

    runs = sub.add_parser("runs", help="experiment runs and Tune trials").add_subparsers(dest="runs_command", required=True)
    rls = runs.add_parser("ls", help="runs, newest first")
    rls.add_argument("--experiment")
    rls.add_argument("--status", choices=["running", "finished", "failed", "stopped"])
    rls.add_argument("--kind", choices=["train", "tune", "trial", "reproduce"])
    rls.add_argument("--parent", help="the trials of this run")
    rls.add_argument("--limit", type=int, default=50)
    rls.add_argument("--json", action="store_true")
    rls.set_defaults(func=_runs_ls)
    rshow = runs.add_parser("show", help="one run: params, per-epoch metrics, data, code, artifacts")
    rshow.add_argument("run", help="a run id or a unique prefix of one")
    rshow.add_argument("--json", action="store_true")
    rshow.set_defaults(func=_runs_show)
    rcmp = runs.add_parser("compare", help="two runs side by side: what differs and the metric deltas")
    rcmp.add_argument("a")
    rcmp.add_argument("b")
    rcmp.add_argument("--json", action="store_true")
    rcmp.set_defaults(func=_runs_compare)
