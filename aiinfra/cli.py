"""The ``aiinfra`` command line (contract in DESIGN.md).

Listing and showing commands take ``--json`` and then print one JSON document on stdout and
nothing else there. Errors go to stderr as ``error: <message>``; the exit status is 2 for a
caller's mistake (bad input, not found) and 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiinfra.config import load_config
from aiinfra.errors import AiInfraError, InvalidInput, NotFound

__all__ = ["main"]


def _print_json(value: Any) -> None:
    from pydantic import BaseModel

    def default(o: Any) -> Any:
        if isinstance(o, BaseModel):
            return o.model_dump(mode="json")
        if hasattr(o, "to_dict"):
            return o.to_dict()
        return str(o)

    json.dump(value, sys.stdout, default=default, indent=2)
    sys.stdout.write("\n")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _cluster_running(config: Any) -> bool:
    from aiinfra.cluster import running_cluster, use_cluster_auth

    use_cluster_auth(config)  # before anything imports Ray
    return running_cluster(config) is not None


def open_platform(config: Any) -> Any:
    """Through the registry actor when a cluster is running; else straight to the stores.

    With no cluster there is no registry actor to go around, and starting Ray (5 to 10 s)
    for a listing would be a poor trade; the metadata DB's transactions keep direct access safe.
    """
    from aiinfra.platform import connect, open_local

    if _cluster_running(config):
        return connect(config)
    return open_local(config)


# -- models ---------------------------------------------------------------------------
def _models_ls(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        models = p.registry.list_models()
    if args.json:
        return _print_json([m.model_dump(mode="json") for m in models])
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
                return _print_json(version.model_dump(mode="json"))
            _print_version(version)
            return
        versions = p.registry.list_versions(args.ref)
    if args.json:
        return _print_json({"name": args.ref, "versions": [v.model_dump(mode="json") for v in versions]})
    print(f"model {args.ref}: {len(versions)} version(s)")
    print(f"{'VERSION':>7}  {'STATUS':<8} {'CREATED':<19}  {'ALIASES':<20} METRICS")
    for v in versions:
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        print(f"{v.version:>7}  {v.status:<8} {_when(v.created_at):<19}  {', '.join(v.aliases) or '-':<20} {metrics}")


def _print_version(v: Any) -> None:
    print(f"{v.ref}  ({v.status}; aliases: {', '.join(v.aliases) or 'none'})")
    print(f"  created     {_when(v.created_at)} by {v.created_by}")
    print(f"  artifacts   {v.artifact_uri}")
    for rel, d in sorted(v.files.items()):
        print(f"    {rel:<28} {d.size:>10} B  sha256 {d.sha256[:16]}...")
    if v.metrics:
        print("  metrics     " + ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items())))
    if v.params:
        print("  params      " + json.dumps(v.params, sort_keys=True))
    lineage = {k: val for k, val in v.lineage.model_dump().items() if val is not None}
    print("  lineage     " + (", ".join(f"{k}={val}" for k, val in lineage.items()) or "none recorded"))
    if v.signature:
        ins = ", ".join(f"{f.name}:{f.dtype}" for f in v.signature.inputs)
        outs = ", ".join(f"{f.name}:{f.dtype}" for f in v.signature.outputs)
        print(f"  signature   ({ins}) -> ({outs})")


def _models_alias(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        version = p.registry.set_alias(args.name, args.version, args.alias)
    if args.json:
        return _print_json(version.model_dump(mode="json"))
    print(f"{args.name}@{args.alias} -> {version.ref}")


def _models_archive(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        version = p.registry.archive(args.name, args.version, reason=args.reason)
    print(f"{version.ref} is {version.status}")


def _models_audit(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        entries = p.registry.audit(args.name)
    if args.json:
        return _print_json([e.model_dump(mode="json") for e in entries])
    for e in entries:
        change = f"{json.dumps(e.before) if e.before else '-'} -> {json.dumps(e.after) if e.after else '-'}"
        print(f"{_when(e.ts)}  {e.who:<24} {e.action:<12} v{e.version or '-':<4} {change}")


# -- data -----------------------------------------------------------------------------
def _catalog(config: Any) -> Any:
    from aiinfra.data.catalog import DatasetCatalog
    from aiinfra.storage import open_artifact_store

    return DatasetCatalog(open_artifact_store(config.storage_root))


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

    print(f"ingesting {args.uri} as {args.name} ...", file=sys.stderr, flush=True)
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
        return _print_json({"created": result.created, **v.model_dump(mode="json", by_alias=True, exclude={"profile"})})
    print(v.version)


def _data_example(args: argparse.Namespace) -> None:
    """Ingest one of the bundled example datasets, so the example configs have data to train on."""
    import tempfile
    from pathlib import Path

    import yaml

    from aiinfra.data.synthetic import CUSTOMERS_SPEC, EXAMPLES

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.name}.csv"
        EXAMPLES[args.name]().to_csv(path, index=False)
        args.uri, args.spec = str(path), None
        if args.name == "customers":  # the demo's validation rules come with it
            args.spec = str(Path(tmp) / "spec.yaml")
            Path(args.spec).write_text(yaml.safe_dump(CUSTOMERS_SPEC))
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
        return _print_json(rows)
    if not rows:
        print("no datasets yet; `aiinfra data ingest NAME URI` adds one")
        return
    print(f"{'NAME':<24} {'LATEST':<16} {'VERSIONS':>8} {'ROWS':>12} {'QUARANTINED':>11}  CREATED")
    for r in rows:
        print(f"{r['name']:<24} {r['latest']:<16} {r['versions']:>8} {r['rows']:>12,} {r['quarantined']:>11,}  {_when(r['created_at'])}")


def _data_show(args: argparse.Namespace) -> None:
    v = _catalog(load_config()).get(args.ref)
    if args.json:
        return _print_json(v.model_dump(mode="json", by_alias=True))
    print(f"{v.ref}  ({v.row_count:,} rows; {v.quarantined_count:,} of {v.rows_in:,} quarantined)")
    print(f"  created   {_when(v.created_at)} by {v.created_by}")
    print(f"  source    {v.source_uri} ({v.source_format})")
    print(f"  parent    {v.parent_version or '-'}; spec {v.spec_hash or 'none'}")
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
        return _print_json(diff)
    print(f"{diff['a']} -> {diff['b']}")
    s = diff["schema"]
    print(f"  schema: added {s['added'] or '-'}, removed {s['removed'] or '-'}, type changed {s['type_changed'] or '-'}")
    rows = diff["profile"]["row_count"]
    print(f"  rows: {rows[0]:,} -> {rows[1]:,}")
    for col, change in diff["profile"]["columns"].items():
        print(f"  {col}: " + "; ".join(f"{k} {v}" for k, v in change.items()))


# -- cluster --------------------------------------------------------------------------
def _up(args: argparse.Namespace) -> None:
    from aiinfra.cluster import up

    info = up(load_config(), port=args.port, dashboard_port=args.dashboard_port, num_cpus=args.num_cpus)
    print(f"Ray cluster   {info['address']}{'' if info['started_by_up'] else ' (already running; reused)'}")
    print(f"dashboard     {info['dashboard_url']}")
    print(f"serve (HTTP)  {info['serve_url']}")
    print(f"API token     {info['token_file']}")
    print(f"submit jobs   RAY_AUTH_MODE=token RAY_ADDRESS={info['dashboard_url']} ray job submit --working-dir . -- python jobs/demo.py")


def _down(args: argparse.Namespace) -> None:
    from aiinfra.cluster import down

    down(load_config())


def _status(args: argparse.Namespace) -> None:
    from aiinfra.cluster import cluster_status

    st = cluster_status(load_config())
    if args.json:
        return _print_json(st)
    if not st["running"]:
        print("no Ray cluster is running; `aiinfra up` starts one")
        return
    print(f"Ray cluster   {st['address']}{' (started by aiinfra up)' if st['started_by_up'] else ''}")
    if st["dashboard_url"]:
        print(f"dashboard     {st['dashboard_url']}")
    print(f"serve (HTTP)  {st['serve_url']}")
    print(f"API token     {st['token_file']}")
    for name, s in st["services"].items():
        print(f"service       {name:<14} {'alive (pid ' + str(s['pid']) + ')' if s['alive'] else 'NOT RUNNING'}")
    for app, a in st["serve"].items():
        serving = a.get("serving")
        what = f"{serving['model']}@{serving['version']}" if serving else "-"
        replicas = ", ".join(f"{d}: {r['replicas']}" for d, r in a["deployments"].items())
        print(f"serve app     {app:<14} {a['status']:<10} serving {what}; replicas {replicas}")


# -- tokens ---------------------------------------------------------------------------
def _token_create(args: argparse.Namespace) -> None:
    from aiinfra.registry.client import default_principal
    from aiinfra.serving.auth import TokenStore
    from aiinfra.storage import open_metadata_db

    db = open_metadata_db(load_config().metadata_url)
    try:
        token = TokenStore(db).create(args.role, who=default_principal())
    finally:
        db.close()
    print(f"created a {args.role!r} token; it is shown once, keep it secret:", file=sys.stderr)
    print(token)


# -- training -------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int | None:
    from pathlib import Path

    from aiinfra.training.config import load_train_config

    config = load_config()
    cfg = load_train_config(args.config)  # every invalid field, before Ray starts or a job is sent
    if args.submit:
        from aiinfra.cluster import submit_job

        path = Path(args.config).resolve()
        try:
            rel = path.relative_to(Path.cwd().resolve())
        except ValueError:
            raise InvalidInput(f"{args.config} is outside this directory, which is what the job uploads; "
                               "run from a directory that contains the config") from None
        job_id, status = submit_job(config, f"python jobs/train.py {rel}", working_dir=".", name=f"train-{cfg.name}",
                                    out=sys.stderr)
        print(f"job {job_id}: {status}", file=sys.stderr)
        if args.json:
            _print_json({"job_id": job_id, "status": status})
        return 0 if status == "SUCCEEDED" else 1
    from aiinfra.pipelines.train import run_training
    from aiinfra.platform import connect

    print(f"training {cfg.name} from {args.config} (state in {config.home})", file=sys.stderr, flush=True)
    with connect(config) as platform:
        outcome = run_training(platform, cfg, log=_stage_log())
    if args.json:
        _print_json(outcome.to_dict())
    else:
        print(outcome.model or outcome.run_id)
    return None


def _predict(args: argparse.Namespace) -> None:
    from aiinfra.pipelines.batch_predict import batch_predict
    from aiinfra.platform import connect
    from aiinfra.registry.client import default_principal

    print(f"scoring {args.dataset} with {args.model} on Ray Data ({args.pool_size} actor(s)) ...", file=sys.stderr, flush=True)
    with connect(load_config()) as platform:
        result = batch_predict(platform, args.model, args.dataset, output=args.output, pool_size=args.pool_size,
                               who=default_principal())
    print(f"{result['rows']:,} rows scored in {result['seconds']:.1f}s -> {result['output']}"
          f"{'' if result['created'] else ' (same content as an existing version)'}", file=sys.stderr)
    if args.json:
        return _print_json(result)
    print(result["output"])


def _monitor_status(args: argparse.Namespace) -> None:
    config = load_config()
    status: dict[str, Any] | None = None
    if _cluster_running(config):
        import ray

        from aiinfra.cluster import running_cluster
        from aiinfra.monitoring.actor import monitor_actor_name

        ray.init(address=running_cluster(config), namespace=config.namespace, log_to_driver=False)
        try:
            handle = ray.get_actor(monitor_actor_name(args.name), namespace=config.namespace)
            status = ray.get(handle.status.remote(args.limit), timeout=30)
        except ValueError:
            status = None  # no monitor running: read what is stored
        finally:
            ray.shutdown()
    if status is None:
        from aiinfra.monitoring.core import read_reports
        from aiinfra.storage import open_metadata_db

        db = open_metadata_db(config.metadata_url)
        try:
            reports = [r.model_dump(mode="json") for r in read_reports(db, args.name, args.limit)]
        finally:
            db.close()
        status = {"model": args.name, "running": False, "reports": reports}
    else:
        status["running"] = True
    if args.json:
        return _print_json(status)
    if status["running"]:
        st = status["stats"]
        print(f"monitor:{args.name} watching {status['version']} against {status['reference']} "
              f"({len(status['features']['numeric'])} numeric, {len(status['features']['categorical'])} categorical inputs)")
        print(f"  rows received {st['rows_seen']:,} (dropped {st['rows_dropped']:,}); open window {st['open_window_rows']:,} "
              f"of {status['settings']['window_rows']:,}; windows closed {st['windows_closed']} (skipped {st['windows_skipped']})")
    else:
        print(f"no monitor is running for {args.name}; stored windows:")
    if not status["reports"]:
        print("  no windows yet: a window closes after window_rows served rows or window_seconds")
    for r in status["reports"]:
        drifted = (r.get("result") or {}).get("drifted_features") or []
        print(f"  window {r['window_id']:>4}  {_when(r['window_end'])}  {r['rows']:>6} rows  {r['status']:<7}  "
              f"{', '.join(drifted) if drifted else r['reason']}")


# -- retraining and the autopilot -------------------------------------------------------
def _retrain(args: argparse.Namespace) -> None:
    from aiinfra.pipelines.retrain import run_retrain
    from aiinfra.platform import connect
    from aiinfra.training.config import load_train_config

    config = load_config()
    cfg = load_train_config(args.config)  # every invalid field, before Ray starts
    if cfg.name != args.model:
        raise InvalidInput(f"{args.config} trains {cfg.name!r}, not {args.model!r}")
    print(f"retraining {args.model} from {args.config} with up to {args.recent_rows:,} labelled production rows",
          file=sys.stderr, flush=True)
    with connect(config) as platform:
        result = run_retrain(platform, args.model, args.config, recent_rows=args.recent_rows,
                             reference_rows=args.reference_rows, result_key=args.result_key, log=_stage_log())
    if args.json:
        return _print_json(result)
    print(result["challenger"] or f"{result['model']} (refused by the gate: not a challenger)")


def _autopilot_connect(config: Any) -> None:
    """Join the running cluster (the autopilot lives there). Call before anything imports Ray."""
    from aiinfra.errors import ServiceUnavailable

    if not _cluster_running(config):  # settles Ray's auth mode first
        raise ServiceUnavailable("no cluster is running: start one with `aiinfra up` (the autopilot lives on it)")
    import ray

    from aiinfra.cluster import running_cluster

    ray.init(address=running_cluster(config), namespace=config.namespace, log_to_driver=False)


def _autopilot_start(args: argparse.Namespace) -> None:
    from aiinfra.autopilot.policy import load_policy

    config = load_config()
    policy = load_policy(args.policy)  # every invalid field, before anything starts
    _autopilot_connect(config)
    import ray

    from aiinfra.autopilot.actor import get_autopilot_actor

    try:
        actor = get_autopilot_actor(config, poll_interval_s=args.poll_interval)
        state = ray.get(actor.watch.remote(policy.model_dump(mode="json")), timeout=60)
    finally:
        ray.shutdown()
    print(f"autopilot drives {policy.model} by {args.policy} (state {state['state']}); "
          f"`aiinfra autopilot status {policy.model}` shows its decisions", file=sys.stderr)


def _autopilot_status(args: argparse.Namespace) -> None:
    config = load_config()
    _autopilot_connect(config)
    import ray

    from aiinfra.autopilot.actor import get_autopilot_actor

    try:
        try:
            actor = get_autopilot_actor(config, create=False)
        except ValueError:
            raise NotFound("no autopilot is running: start it with `aiinfra autopilot start POLICY.yaml`") from None
        status = ray.get(actor.status.remote(args.name, args.limit), timeout=60)
    finally:
        ray.shutdown()
    if args.json:
        return _print_json(status)
    if not status["models"]:
        print("the autopilot drives no model" + (f" named {args.name!r}" if args.name else ""))
    for model, s in status["models"].items():
        st = s["state"]
        extra = ""
        if st["state"] == "retraining":
            extra = f" (job {st['job_id']})"
        elif st["state"] == "canary":
            extra = f" (version {st['challenger_version']} on {st['canary_share']:.0%} of traffic)"
        print(f"{model}: {st['state']}{extra}; drift streak {st['drift_streak']}; retrains in 24 h {st['retrains_last_24h']}"
              + ("; in cooldown" if st["in_cooldown"] else ""))
        if s["last_error"]:
            print(f"  last error: {s['last_error']}")
        for d in s["decisions"]:
            print(f"  {d['seq']:>4}  {_when(d['at'])}  {d['action']:<12}  {d['reason']}")


def _autopilot_stop(args: argparse.Namespace) -> None:
    config = load_config()
    _autopilot_connect(config)
    import ray

    from aiinfra.autopilot.actor import get_autopilot_actor

    try:
        actor = get_autopilot_actor(config, create=False)
        removed = ray.get(actor.unwatch.remote(args.name), timeout=60)
    except ValueError:
        removed = False
    finally:
        ray.shutdown()
    print(f"the autopilot no longer drives {args.name}" if removed else f"the autopilot was not driving {args.name}",
          file=sys.stderr)


def _serve_deploy(args: argparse.Namespace) -> None:
    from aiinfra.errors import ServiceUnavailable

    config = load_config()
    if not _cluster_running(config):
        raise ServiceUnavailable("no Ray cluster is running here: start one with `aiinfra up` (or set RAY_ADDRESS)")
    from ray import serve

    from aiinfra.platform import connect
    from aiinfra.serving.app import build_app

    with connect(config) as platform:
        version = platform.registry.get(args.ref)  # an unknown model fails here, before Serve is touched
        if version.signature is None:
            raise InvalidInput(f"{version.ref} has no signature; register it with one to serve it")
        serve.start(http_options={"host": config.serve.host, "port": config.serve.port,
                                  "request_timeout_s": config.serve.request_timeout_s})
        print(f"deploying {args.ref} (now {version.ref}) as Serve app 'aiinfra' ...", file=sys.stderr, flush=True)
        serve.run(build_app(config, args.ref), name="aiinfra", route_prefix="/")  # returns once it is healthy
    base = f"http://{config.serve.host}:{config.serve.port}"
    result = {"app": "aiinfra", "ref": args.ref, "version": version.ref, "url": f"{base}/predict/{version.name}",
              "oip": f"{base}/v2/models/{version.name}"}
    if args.json:
        return _print_json(result)
    print(f"serving {args.ref} ({version.ref}) at {result['url']} and {result['oip']}")


def _serve_status(args: argparse.Namespace) -> None:
    from aiinfra.cluster import cluster_status

    st = cluster_status(load_config())
    apps = st.get("serve", {})
    if args.json:
        return _print_json({"running": st["running"], "serve_url": st.get("serve_url"), "apps": apps})
    if not st["running"]:
        print("no Ray cluster is running; `aiinfra up` starts one")
        return
    if not apps:
        print("no Serve apps; `aiinfra serve deploy NAME@champion` deploys one")
    for app, a in apps.items():
        serving = a.get("serving")
        what = f"{serving['model']}@{serving['version']} ({serving['ref']})" if serving else "-"
        canary = (serving or {}).get("canary")
        replicas = ", ".join(f"{d}: {r['replicas']}" for d, r in a["deployments"].items())
        print(f"{app:<12} {a['status']:<10} serving {what}"
              + (f"; canary v{canary['version']} at {canary['share']:.0%}" if canary else "") + f"; replicas {replicas}")


def _stage_log() -> Any:
    from aiinfra.pipelines.progress import StageLog

    return StageLog(total=0, out=sys.stderr)  # the pipeline sets how many stages it runs


def _reproduce(args: argparse.Namespace) -> int:
    from aiinfra.pipelines.train import reproduce
    from aiinfra.platform import connect

    with connect(load_config()) as platform:
        result = reproduce(platform, args.ref, tolerance=args.tolerance, log=_stage_log())
    if args.json:
        _print_json(result)
    else:
        print(f"{result['model']} rebuilt as run {result['run_id']} (original run {result['original_run_id']})")
        print(f"  config hash {'matches' if result['config_hash'] == result['original_config_hash'] else 'DIFFERS'}")
        for name, m in result["metrics"].items():
            diff = "-" if m["difference"] is None else f"{m['difference']:+.4f}"
            reproduced = "-" if m["reproduced"] is None else f"{m['reproduced']:.4f}"
            print(f"  {name:<14} registered {m['registered']:.4f}  reproduced {reproduced}  difference {diff}")
        verdict = "within" if result["within_tolerance"] else "OUTSIDE"
        print(f"  largest difference {result['max_abs_difference']}: {verdict} the tolerance {result['tolerance']}")
    return 0 if result["within_tolerance"] else 1


def _runs_ls(args: argparse.Namespace) -> None:
    filters = {k: v for k, v in {"experiment": args.experiment, "status": args.status, "kind": args.kind,
                                  "parent_run_id": args.parent}.items() if v}
    with open_platform(load_config()) as p:
        runs = p.registry.list_runs(limit=args.limit, **filters)
    if args.json:
        return _print_json([r.model_dump(mode="json") for r in runs])
    if not runs:
        print("no runs yet; `aiinfra train jobs/configs/churn.yaml` makes one")
        return
    print(f"{'RUN':<30} {'EXPERIMENT':<16} {'KIND':<9} {'STATUS':<9} {'STARTED':<19} {'SECONDS':>8}  METRICS")
    for r in runs:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())[:4])
        secs = f"{r.duration_s:.1f}" if r.duration_s is not None else "-"
        print(f"{r.run_id:<30} {r.experiment:<16} {r.kind:<9} {r.status:<9} {_when(r.started_at):<19} {secs:>8}  {metrics}")


def _runs_show(args: argparse.Namespace) -> None:
    with open_platform(load_config()) as p:
        r = p.registry.get_run(args.run)
    if args.json:
        return _print_json(r.model_dump(mode="json"))
    print(f"{r.run_id}  ({r.kind} in experiment {r.experiment}; {r.status})")
    print(f"  started     {_when(r.started_at)} by {r.created_by}" + (f"; ended {_when(r.ended_at)}" if r.ended_at else ""))
    if r.parent_run_id:
        print(f"  parent      {r.parent_run_id}")
    print(f"  data        {', '.join(r.dataset_versions) or '-'}")
    print(f"  code        {r.code_version.get('version', '-')}; config {r.config_hash or '-'}; seed {r.seed}")
    if r.cpu_seconds is not None:
        print(f"  resources   {r.cpu_seconds:.1f} CPU-s, {r.gpu_seconds or 0:.1f} GPU-s")
    if r.metrics:
        print("  metrics     " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())))
    for name, uri in r.artifacts.items():
        print(f"  artifact    {name}: {uri}")
    if r.error:
        print(f"  error       {r.error}")
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
        return _print_json(diff)
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


# -- demo -----------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> None:
    from aiinfra.pipelines.demo import run_demo

    run_demo(load_config(), rows=args.rows, epochs=args.epochs, seed=args.seed, keep_serving=args.keep_serving,
             loop=not args.no_loop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiinfra", description="The ML platform on one Ray cluster.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole lifecycle on the embedded default: data -> train -> register -> serve -> predict")
    demo.add_argument("--rows", type=int, default=20_000, help="rows of synthetic customer data (default 20000)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--keep-serving", action="store_true", help="keep the HTTP endpoint up until Ctrl-C (on a cluster it stays up)")
    demo.add_argument("--no-loop", action="store_true",
                      help="stop once the first model serves (skip drift -> retrain -> canary -> promote)")
    demo.set_defaults(func=_demo)

    data = sub.add_parser("data", help="datasets: ingest, list, show, compare").add_subparsers(dest="data_command", required=True)
    ingest = data.add_parser("ingest", help="validate, quarantine, profile and version URI as dataset NAME; prints the version id")
    ingest.add_argument("name")
    ingest.add_argument("uri", help="a CSV, Parquet or JSON lines file or directory; local, s3:// or gs://")
    ingest.add_argument("--spec", help="validation spec YAML (column types, bounds, allowed values, key, thresholds)")
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(func=_data_ingest)
    dex = data.add_parser("example", help="ingest a bundled example dataset (customers: the demo's; digits: 8x8 images)")
    dex.add_argument("name", choices=["customers", "digits"])
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

    up = sub.add_parser("up", help="start a local Ray head (dashboard, token auth) with the platform services and Serve")
    up.add_argument("--port", type=int, default=6379)
    up.add_argument("--dashboard-port", type=int, default=8265)
    up.add_argument("--num-cpus", type=int, default=None)
    up.set_defaults(func=_up)
    sub.add_parser("down", help="stop the cluster `aiinfra up` started (and nothing else)").set_defaults(func=_down)
    status = sub.add_parser("status", help="services, Serve apps with replicas and models, URLs")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    token = sub.add_parser("token", help="API tokens for the HTTP endpoints").add_subparsers(dest="token_command", required=True)
    tcreate = token.add_parser("create", help="print a new bearer token (stored hashed)")
    tcreate.add_argument("--role", default="predict", choices=["admin", "predict", "feedback"])
    tcreate.set_defaults(func=_token_create)

    train = sub.add_parser("train", help="the training pipeline: data -> features -> train or tune -> evaluate -> gate -> register")
    train.add_argument("config", help="a training config YAML (examples in jobs/configs/)")
    train.add_argument("--submit", action="store_true", help="run it on the cluster as a Ray job (jobs/train.py) and follow its logs")
    train.add_argument("--json", action="store_true")
    train.set_defaults(func=_train)

    predict = sub.add_parser("predict", help="batch inference: score DATASET with MODEL, write a new dataset version")
    predict.add_argument("model", help="NAME@VERSION or NAME@ALIAS")
    predict.add_argument("dataset", help="NAME or NAME@VERSION")
    predict.add_argument("--output", help="the output dataset's name (default: <dataset>_<model>_predictions)")
    predict.add_argument("--pool-size", type=int, default=1, help="scoring actors")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=_predict)

    serve_cmd = sub.add_parser("serve", help="HTTP inference on Ray Serve").add_subparsers(dest="serve_command", required=True)
    sdeploy = serve_cmd.add_parser("deploy", help="serve NAME@ALIAS (it follows the alias) or NAME@VERSION on the running cluster")
    sdeploy.add_argument("ref")
    sdeploy.add_argument("--json", action="store_true")
    sdeploy.set_defaults(func=_serve_deploy)
    sstatus = serve_cmd.add_parser("status", help="Serve apps, the version each serves, canaries, replicas")
    sstatus.add_argument("--json", action="store_true")
    sstatus.set_defaults(func=_serve_status)

    monitor = sub.add_parser("monitor", help="drift monitoring of served models").add_subparsers(dest="monitor_command", required=True)
    mstatus = monitor.add_parser("status", help="the latest drift windows of NAME and what its monitor has received")
    mstatus.add_argument("name")
    mstatus.add_argument("--limit", type=int, default=10)
    mstatus.add_argument("--json", action="store_true")
    mstatus.set_defaults(func=_monitor_status)

    retrain = sub.add_parser("retrain", help="retrain MODEL on recent labelled production rows plus its reference data; "
                                             "register the result without an alias (what the autopilot submits)")
    retrain.add_argument("model")
    retrain.add_argument("--config", required=True, help="the model's training config YAML")
    retrain.add_argument("--recent-rows", type=int, default=5000, help="labelled production rows to add (default 5000)")
    retrain.add_argument("--reference-rows", type=int, default=None,
                         help="the newest rows of the training dataset to keep (default: all)")
    retrain.add_argument("--result-key", default=None, help="artifact-store key to write the result JSON to")
    retrain.add_argument("--json", action="store_true")
    retrain.set_defaults(func=_retrain)

    autopilot = sub.add_parser("autopilot", help="retrain, canary and promote on drift or a performance drop") \
        .add_subparsers(dest="autopilot_command", required=True)
    astart = autopilot.add_parser("start", help="drive a model by a policy YAML (example: jobs/configs/autopilot_churn.yaml)")
    astart.add_argument("policy")
    astart.add_argument("--poll-interval", type=float, default=5.0, help="seconds between the autopilot's checks")
    astart.set_defaults(func=_autopilot_start)
    astatus = autopilot.add_parser("status", help="state and decision log (with evidence: --json) of each driven model")
    astatus.add_argument("name", nargs="?")
    astatus.add_argument("--limit", type=int, default=20)
    astatus.add_argument("--json", action="store_true")
    astatus.set_defaults(func=_autopilot_status)
    astop = autopilot.add_parser("stop", help="stop driving NAME (its state and log are kept)")
    astop.add_argument("name")
    astop.set_defaults(func=_autopilot_stop)

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
    audit.set_defaults(func=_models_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except AiInfraError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2 if 400 <= e.status_code < 500 else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
