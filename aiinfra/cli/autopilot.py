"""``aiinfra retrain`` and ``aiinfra autopilot``: retrain, canary and promote on drift or a performance drop."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aiinfra.cli import common  # cluster_running looked up at call time: the tests replace it
from aiinfra.cli.common import print_json, stage_log, when
from aiinfra.cluster_access import running_cluster
from aiinfra.config import load_config
from aiinfra.errors import InvalidInput, NotFound, ServiceUnavailable


def _retrain(args: argparse.Namespace) -> None:
    # Inside: torch, scipy and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.pipelines.retrain import run_retrain
    from aiinfra.platform import connect
    from aiinfra.training.config import load_train_config

    config = load_config()
    cfg = load_train_config(args.config)  # every invalid field, before Ray starts
    if cfg.name != args.model:
        raise InvalidInput(f"{args.config} trains {cfg.name!r}, not {args.model!r}")
    print(f"retraining {args.model} from {args.config} with up to {args.recent_rows:,} labelled production rows",
          file=sys.stderr, flush=True)
    _check_driver_memory(config, cfg, args)  # before any data is read: refused here rather than killed halfway
    with connect(config) as platform:
        result = run_retrain(platform, args.model, args.config, recent_rows=args.recent_rows,
                             reference_rows=args.reference_rows, result_key=args.result_key,
                             min_trusted_holdout=args.min_trusted_holdout, max_untrusted_share=args.max_untrusted_share,
                             log=stage_log())
    if args.json:
        return print_json(result.model_dump(mode="json"))
    print(result.challenger or f"{result.model} (refused by the gate: not a challenger)")


def _check_driver_memory(config: Any, cfg: Any, args: argparse.Namespace) -> None:
    """The retrain's driver memory, estimated from the manifests, against ``jobs.entrypoint_memory_bytes`` where it
    is set, else against what this node has available now (the job's driver runs here).

    Raises:
        InvalidInput: the estimate is over that, naming both and what to change.
    """
    # Inside: pandas and pyarrow; `aiinfra --help` must not pay for them.
    import psutil

    from aiinfra.cli.training import read_manifests
    from aiinfra.pipelines.train import use_ray_engine
    from aiinfra.training.budgets import check_driver_budget, retrain_driver_estimate

    manifests = read_manifests(config, cfg)
    if manifests is None:
        return
    base, source = manifests
    if source is not None and source.name == base.name:
        source = None  # the view's source is the window itself: nothing more is read for the join
    engine = "ray" if use_ray_engine(cfg.data.engine, base, source.row_count if source else 0) else "memory"
    estimate = retrain_driver_estimate(cfg, base, recent_rows=args.recent_rows, reference_rows=args.reference_rows,
                                       source=source, engine=engine)
    what = f"the retrain of {cfg.name} on {base.ref}"
    budget = config.jobs.entrypoint_memory_bytes
    if budget:
        check_driver_budget(estimate, budget, what)
    else:
        available = psutil.virtual_memory().available
        if estimate.bytes > available:
            raise InvalidInput(f"{what}: its driver would hold {estimate}, more than this node has available "
                               f"({available / (1 << 30):.2f} GiB); set data.engine: ray in the training config, lower "
                               "the policy's recent_rows or reference_rows, or give the job's driver a larger node "
                               "(jobs.entrypoint_memory_bytes)")
    print(f"the retrain's driver will hold {estimate}", file=sys.stderr, flush=True)


def _autopilot_connect(config: Any) -> None:
    """Join the running cluster (the autopilot lives there). Call before anything imports Ray."""
    if not common.cluster_running(config):  # settles Ray's auth mode first
        raise ServiceUnavailable("no cluster is running: start one with `aiinfra up` (the autopilot lives on it)")
    # Ray inside, after cluster_running() set RAY_AUTH_MODE: Ray reads it once, when imported.
    import ray

    ray.init(address=running_cluster(config), namespace=config.namespace, log_to_driver=False)


def _autopilot_start(args: argparse.Namespace) -> None:
    # Inside: scipy and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.autopilot.policy import load_policy

    config = load_config()
    policy = load_policy(args.policy)  # every invalid field, before anything starts
    _autopilot_connect(config)
    # Ray inside, after cluster_running() set RAY_AUTH_MODE: Ray reads it once, when imported.
    import ray

    # Inside: scipy and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.autopilot.client import AutopilotClient

    try:
        state = AutopilotClient.on_cluster(config, create=True, poll_interval_s=args.poll_interval).watch(policy)
    finally:
        ray.shutdown()
    print(f"autopilot drives {policy.model} by {args.policy} (state {state['state']}); "
          f"`aiinfra autopilot status {policy.model}` shows its decisions", file=sys.stderr)


def _autopilot_status(args: argparse.Namespace) -> None:
    config = load_config()
    _autopilot_connect(config)
    # Ray inside, after cluster_running() set RAY_AUTH_MODE: Ray reads it once, when imported.
    import ray

    # Inside: scipy and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.autopilot.client import AutopilotClient

    try:
        autopilot = AutopilotClient.if_running(config)
        if autopilot is None:
            raise NotFound("no autopilot is running: start it with `aiinfra autopilot start POLICY.yaml`")
        status = autopilot.status(args.name, args.limit)
    finally:
        ray.shutdown()
    if args.json:
        return print_json(status)
    if not status["models"]:
        print("the autopilot drives no model" + (f" named {args.name!r}" if args.name else ""))
    for model, s in status["models"].items():
        st = s["state"]
        extra = ""
        if st["state"] == "retraining":
            extra = f" (job {st['job_id']})"
        elif st["state"] == "canary":
            extra = f" (version {st['challenger_version']} on {st['canary_share']:.0%} of traffic)"
        elif st["state"] == "awaiting_approval":
            extra = f" (version {st['challenger_version']}: `aiinfra models approve {st['approval_request']}`)"
        print(f"{model}: {st['state']}{extra}; drift streak {st['drift_streak']}; retrains in 24 h {st['retrains_last_24h']}"
              + ("; in cooldown" if st["in_cooldown"] else ""))
        if s["last_error"]:
            print(f"  last error: {s['last_error']}")
        for d in s["decisions"]:
            print(f"  {d['seq']:>4}  {when(d['at'])}  {d['action']:<12}  {d['reason']}")


def _autopilot_stop(args: argparse.Namespace) -> None:
    config = load_config()
    _autopilot_connect(config)
    # Ray inside, after cluster_running() set RAY_AUTH_MODE: Ray reads it once, when imported.
    import ray

    # Inside: scipy and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.autopilot.client import AutopilotClient

    try:
        autopilot = AutopilotClient.if_running(config)
        removed = autopilot is not None and autopilot.unwatch(args.name)
    finally:
        ray.shutdown()
    print(f"the autopilot no longer drives {args.name}" if removed else f"the autopilot was not driving {args.name}",
          file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    retrain = sub.add_parser("retrain", help="retrain MODEL on recent labelled production rows plus its reference data; "
                                             "register the result without an alias (what the autopilot submits)")
    retrain.add_argument("model")
    retrain.add_argument("--config", required=True, help="the model's training config YAML")
    retrain.add_argument("--recent-rows", type=int, default=5000, help="labelled production rows to add (default 5000)")
    retrain.add_argument("--reference-rows", type=int, default=None,
                         help="the newest rows of the training dataset to keep (default: all)")
    retrain.add_argument("--min-trusted-holdout", type=int, default=100,
                         help="rows labelled by a labeller/admin token needed to judge on production rows (default 100; "
                              "else the newest reference rows judge)")
    retrain.add_argument("--max-untrusted-share", type=float, default=0.3,
                         help="rows labelled by the client that made the request: at most this share of the training "
                              "rows (default 0.3)")
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
