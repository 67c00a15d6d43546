"""``aiinfra train`` and ``aiinfra predict``: the training and batch inference pipelines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiinfra import jobs
from aiinfra.cli.common import print_json, stage_log
from aiinfra.config import load_config
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
        job_id = jobs.submit(config, f"python jobs/train.py {rel}", working_dir=".", name=f"train-{cfg.name}")
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


def _predict(args: argparse.Namespace) -> None:
    # Inside: torch and pandas; `aiinfra --help` must not pay for them.
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
    predict.add_argument("--pool-size", type=int, default=1, help="scoring actors")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=_predict)
