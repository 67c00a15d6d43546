"""`ray job submit --working-dir . -- python jobs/demo.py`: the demo as a Ray job on a running cluster."""

from __future__ import annotations

import argparse
import sys

from aiinfra.config import load_config
from aiinfra.demo.run import run_demo
from aiinfra.errors import AiInfraError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    try:
        run_demo(load_config(), rows=args.rows, epochs=args.epochs)
    except AiInfraError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
