"""``aiinfra train`` and ``aiinfra predict``: the training and batch inference pipelines."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from aiinfra import jobs
from aiinfra.cli.common import print_json, stage_log
from aiinfra.config import BatchSettings, load_config, validate_as
from aiinfra.errors import InvalidInput


def _train(args: argparse.Namespace) -> int | None:
    # Inside: the training config loads torch; `aiinfra --help` must not pay for it.
    from aiinfra.training.config import load_train_config

    config = load_config()
    cfg = load_train_config(args.config)  # every invalid field, before Ray starts or a job is sent
    if args.submit:
        path = Path(args.config).resolve()
        try:
            rel = path.relative_to(Path.cwd().resolve())
        except ValueError:
            raise InvalidInput(f"{args.config} is outside this directory, which is what the job uploads; "
                               "run from a directory that contains the config") from None
        from aiinfra.training.budgets import driver_memory_request

        estimate = _driver_estimate(config, cfg)
        request = driver_memory_request(estimate, config.jobs.entrypoint_memory_bytes,
                                        jobs.node_memory(config) if estimate is not None else [],
                                        f"training {cfg.name}")
        job_id = jobs.submit(config, f"python jobs/train.py {rel}", working_dir=".", name=f"train-{cfg.name}",
                             entrypoint_memory=request)
        if estimate is not None:
            asked = (f"; it asks for {request / (1 << 30):.2f} GiB of a node's memory" if request else
                     "; its budget is jobs.entrypoint_memory_bytes" if config.jobs.entrypoint_memory_bytes else
                     "; the cluster's nodes could not be read, so it asks for no memory")
            print(f"the job's driver will hold {estimate}{asked}", file=sys.stderr, flush=True)
        print(f"submitted {job_id} to {jobs.job_server(config)}; logs follow (Ctrl-C stops following, not the job)",
              file=sys.stderr, flush=True)
        status = jobs.follow(config, job_id, out=sys.stderr)
        print(f"job {job_id}: {status}", file=sys.stderr)
        if args.json:
            print_json({"job_id": job_id, "status": status})
        return 0 if status == "SUCCEEDED" else 1
    # Inside: torch and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.pipelines.train import run_training
    from aiinfra.platform import connect

    print(f"training {cfg.name} from {args.config} (state in {config.home})", file=sys.stderr, flush=True)
    with connect(config) as platform:
        outcome = run_training(platform, cfg, log=stage_log())
    if args.json:
        print_json(outcome.to_dict())
    else:
        print(outcome.model or outcome.run_id)
    return None


def read_manifests(config: Any, cfg: Any) -> tuple[Any, Any] | None:
    """(the training dataset's version, the feature view's source version or None), read here for a driver's
    memory estimate; None, with a note, where this machine cannot read them (a cluster's storage it has no
    credentials for): the estimate is advice and must not stop the job."""
    from aiinfra.errors import AiInfraError
    from aiinfra.pipelines.train import feature_source
    from aiinfra.platform import open_local

    try:
        with open_local(config) as platform:
            return platform.datasets.get(cfg.data.dataset), feature_source(platform, cfg)
    except AiInfraError as e:
        print(f"the driver's memory is not estimated: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - see above
        print(f"the driver's memory is not estimated (the manifests cannot be read here: {type(e).__name__})", file=sys.stderr)
    return None


def _driver_estimate(config: Any, cfg: Any) -> Any:
    """The training job's driver memory, estimated from the manifests here; refused past jobs.entrypoint_memory_bytes.
    None (and a note) where this machine cannot read the manifests (a cluster's storage it has no credentials for)."""
    from aiinfra.pipelines.train import use_ray_engine
    from aiinfra.training.budgets import check_driver_budget, training_driver_estimate

    manifests = read_manifests(config, cfg)
    if manifests is None:
        return None
    version, source = manifests
    engine = "ray" if use_ray_engine(cfg.data.engine, version, source.row_count if source else 0) else "memory"
    estimate = training_driver_estimate(cfg, version, source=source, engine=engine)
    check_driver_budget(estimate, config.jobs.entrypoint_memory_bytes, f"training {cfg.name} on {version.ref}")
    return estimate


def _predict(args: argparse.Namespace) -> None:
    # Inside: torch and pandas; `aiinfra --help` must not pay for them.
    from aiinfra.pipelines.batch_predict import batch_predict
    from aiinfra.platform import connect
    from aiinfra.registry.client import default_principal

    config = load_config()
    flags = {k: v for k, v in (("min_actors", args.min_actors), ("max_actors", args.max_actors)) if v is not None}
    settings = validate_as(BatchSettings, {**config.batch.model_dump(), **flags}, "--min-actors/--max-actors")
    pool = f"{args.pool_size} actor(s)" if args.pool_size else (
        f"{settings.min_actors} to {settings.max_actors if settings.max_actors else 'the cluster CPUs / ' + str(settings.actor_cpus)} actors")
    print(f"scoring {args.dataset} with {args.model} on Ray Data ({pool}) ...", file=sys.stderr, flush=True)
    last = [time.monotonic()]

    def progress(stats: Any) -> None:
        if time.monotonic() - last[0] >= 2.0:
            last[0] = time.monotonic()
            print(f"  {stats.rows_in:,} rows scored", file=sys.stderr, flush=True)

    with connect(config) as platform:
        result = batch_predict(platform, args.model, args.dataset, output=args.output, pool_size=args.pool_size,
                               settings=settings, who=default_principal(), progress=progress,
                               partition_by=[c for c in (args.partition_by or "").split(",") if c])
    print(f"{result['rows']:,} rows scored in {result['seconds']:.1f}s -> {result['output']}"
          f"{'' if result['created'] else ' (same content as an existing version)'}", file=sys.stderr)
    if args.json:
        return print_json(result)
    print(result["output"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="the training pipeline: data -> features -> train or tune -> evaluate -> gate -> register")
    train.add_argument("config", help="a training config YAML (examples in jobs/configs/)")
    train.add_argument("--submit", action="store_true", help="run it on the cluster as a Ray job (jobs/train.py) and follow its logs")
    train.add_argument("--json", action="store_true")
    train.set_defaults(func=_train)

    predict = sub.add_parser("predict", help="batch inference: score DATASET with MODEL, write a new dataset version")
    predict.add_argument("model", help="NAME@VERSION or NAME@ALIAS")
    predict.add_argument("dataset", help="NAME or NAME@VERSION")
    predict.add_argument("--output", help="the output dataset's name (default: <dataset>_<model>_predictions)")
    predict.add_argument("--pool-size", type=int, help="a fixed number of scoring actors (default: an autoscaling pool)")
    predict.add_argument("--min-actors", type=int, help="the autoscaling pool's minimum (config: batch.min_actors, 1)")
    predict.add_argument("--max-actors", type=int,
                         help="the autoscaling pool's maximum (config: batch.max_actors; default: the cluster's CPUs / batch.actor_cpus)")
    predict.add_argument("--partition-by", metavar="COL[,COL]",
                         help="write the predictions' files by these columns' values (col=value/ directories)")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=_predict)
