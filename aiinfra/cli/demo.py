"""``aiinfra demo``: the whole lifecycle on the embedded default."""

from __future__ import annotations

import argparse

from aiinfra.config import load_config


def _demo(args: argparse.Namespace) -> None:
    # Inside: the demo loads torch, pandas and matplotlib; `aiinfra --help` must not pay for them.
    from aiinfra.demo.run import run_demo

    run_demo(load_config(), rows=args.rows, epochs=args.epochs, seed=args.seed, keep_serving=args.keep_serving,
             loop=not args.no_loop)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole lifecycle on the embedded default: data -> train -> register -> serve -> predict")
    demo.add_argument("--rows", type=int, default=20_000, help="rows of synthetic customer data (default 20000)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--keep-serving", action="store_true", help="keep the HTTP endpoint up until Ctrl-C (on a cluster it stays up)")
    demo.add_argument("--no-loop", action="store_true",
                      help="stop once the first model serves (skip drift -> retrain -> canary -> promote)")
    demo.set_defaults(func=_demo)
