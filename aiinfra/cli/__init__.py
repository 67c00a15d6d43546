"""The ``aiinfra`` command line (its verbs are a contract: README.md lists them).

Listing and showing commands take ``--json`` and then print one JSON document on stdout and
nothing else there. Errors go to stderr as ``error: <message>``; the exit status is 2 for a
caller's mistake (bad input, not found) and 1 for anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiinfra.cli import (
    autopilot,
    cluster,
    common,
    data,
    demo,
    features,
    models,
    monitoring,
    runs,
    serving,
    training,
)
from aiinfra.cli.common import open_platform
from aiinfra.config import ENV
from aiinfra.errors import AiInfraError
from aiinfra.redaction import redact_text

__all__ = ["build_parser", "main", "open_platform"]

# In the order `aiinfra --help` lists their verbs.
_GROUPS = (demo, data, features, cluster, training, serving, monitoring, autopilot, runs, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiinfra", description="The ML platform on one Ray cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "json", False):
            # `--json` keeps stdout for its one JSON document: everything else printed meanwhile (Ray forwards its
            # workers' stdout to ours: XGBoost's round log, Ray Train's reports) goes to stderr.
            with common.json_stdout():
                rc = args.func(args)
        else:
            rc = args.func(args)
    except AiInfraError as e:
        # A message may quote a driver's or pyarrow's text: no URI credentials, nor the configured ones, in it.
        print(f"error: {redact_text(e.message, [ENV.METADATA_URL.get(), ENV.STORAGE_ROOT.get()])}", file=sys.stderr)
        return 2 if 400 <= e.status_code < 500 else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return rc or 0
