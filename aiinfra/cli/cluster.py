"""The local Ray cluster (``up``, ``down``, ``status``) and API tokens (``token create``)."""

from __future__ import annotations

import argparse
import sys

from aiinfra.cli.common import print_json
from aiinfra.cluster import cluster_status, down, up
from aiinfra.config import load_config


def _up(args: argparse.Namespace) -> None:
    info = up(load_config(), port=args.port, dashboard_port=args.dashboard_port, num_cpus=args.num_cpus)
    print(f"Ray cluster   {info['address']}{'' if info['started_by_up'] else ' (already running; reused)'}")
    print(f"dashboard     {info['dashboard_url']}")
    print(f"serve (HTTP)  {info['serve_url']}")
    print(f"API token     {info['token_file']}")
    print(f"submit jobs   RAY_AUTH_MODE=token RAY_ADDRESS={info['dashboard_url']} ray job submit --working-dir . -- python jobs/demo.py")


def _down(args: argparse.Namespace) -> None:
    down(load_config())


def _status(args: argparse.Namespace) -> None:
    st = cluster_status(load_config())
    if args.json:
        return print_json(st)
    if not st["running"]:
        print("no Ray cluster is running; `aiinfra up` starts one")
        return
    print(f"Ray cluster   {st['address']}{' (started by aiinfra up)' if st['started_by_up'] else ''}")
    if st["dashboard_url"]:
        print(f"dashboard     {st['dashboard_url']}")
    print(f"serve (HTTP)  {st['serve_url']}")
    print(f"API token     {st['token_file']}")
    print(f"metadata      {st['metadata_url']}")
    print(f"storage       {st['storage_root']}")
    for name, s in st["services"].items():
        print(f"service       {name:<14} {'alive (pid ' + str(s['pid']) + ')' if s['alive'] else 'NOT RUNNING'}")
    for app, a in st["serve"].items():
        serving = a.get("serving")
        what = f"{serving['model']}@{serving['version']}" if serving else "-"
        replicas = ", ".join(f"{d}: {r['replicas']}" for d, r in a["deployments"].items())
        print(f"serve app     {app:<14} {a['status']:<10} serving {what}; replicas {replicas}")


def _token_create(args: argparse.Namespace) -> None:
    # Inside: these load pyarrow and numpy; `aiinfra --help` must not pay for them.
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    up_cmd = sub.add_parser("up", help="start a local Ray head (dashboard, token auth) with the platform services and Serve")
    up_cmd.add_argument("--port", type=int, default=6379)
    up_cmd.add_argument("--dashboard-port", type=int, default=8265)
    up_cmd.add_argument("--num-cpus", type=int, default=None)
    up_cmd.set_defaults(func=_up)
    sub.add_parser("down", help="stop the cluster `aiinfra up` started (and nothing else)").set_defaults(func=_down)
    status = sub.add_parser("status", help="services, Serve apps with replicas and models, URLs")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    token = sub.add_parser("token", help="API tokens for the HTTP endpoints").add_subparsers(dest="token_command", required=True)
    tcreate = token.add_parser("create", help="print a new bearer token (stored hashed)")
    tcreate.add_argument("--role", default="predict", choices=["admin", "predict", "feedback"])
    tcreate.set_defaults(func=_token_create)
