"""The local Ray cluster (``up``, ``down``, ``status``) and API tokens (``token create|list|revoke``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from aiinfra.cli.common import print_json, when
from aiinfra.cluster import cluster_status, down, up
from aiinfra.config import load_config
from aiinfra.errors import InvalidInput
from aiinfra.identity.roles import ROLES


def _up(args: argparse.Namespace) -> None:
    info = up(load_config(), port=args.port, dashboard_port=args.dashboard_port, num_cpus=args.num_cpus)
    print(f"Ray cluster   {info['address']}{'' if info['started_by_up'] else ' (already running; reused)'}")
    print(f"dashboard     {info['dashboard_url']}")
    print(f"serve (HTTP)  {info['serve_url']}")
    print(f"API token     {info['token_file']}")
    print(f"Ray auth      {info['auth_mode']}" + ("" if info["auth_mode"] == "token" else
                                                   " (not started by `aiinfra up`: aiinfra cannot confirm it needs a token)"))
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
        models = (a.get("serving") or {}).get("models") or {}
        what = ", ".join(f"{m['model']}@{m['version']}" for m in models.values()) or "-"
        replicas = ", ".join(f"{d}: {r['replicas']}" for d, r in a["deployments"].items())
        print(f"serve app     {app:<14} {a['status']:<10} serving {what}; replicas {replicas}")


def _tokens() -> Any:
    """The token store on this machine's metadata DB: tokens live there whether or not a cluster runs."""
    # Inside: these load pyarrow and numpy; `aiinfra --help` must not pay for them.
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.storage import open_metadata_db

    # No background writer: the CLI checks no token, so it has no last use to record.
    return TokenStore(open_metadata_db(load_config().metadata_url), background=False)


def _token_create(args: argparse.Namespace) -> None:
    from aiinfra.features.views import parse_duration  # inside: as _tokens
    from aiinfra.registry.client import default_principal

    try:
        expires_in_s = parse_duration(args.expires) if args.expires is not None else None
    except ValueError as e:
        raise InvalidInput(f"--expires: {e}") from None
    tokens = _tokens()
    try:
        made = tokens.issue(args.role, who=default_principal(), model=args.model, expires_in_s=expires_in_s,
                            holder=args.holder)
    finally:
        tokens.db.close()
    if args.json:
        return print_json(dataclasses.asdict(made))
    scope = (f" for model {made.model!r}" if made.model else "") + (f", issued to {made.holder}" if made.holder else "")
    until = f", expiring {when(made.expires_at)}" if made.expires_at is not None else ""
    print(f"created a {made.role!r} token {made.id}{scope}{until}; it is shown once, keep it secret:", file=sys.stderr)
    print(made.token)


def _token_list(args: argparse.Namespace) -> None:
    tokens = _tokens()
    try:
        rows = tokens.list()  # never the secret nor its hash
    finally:
        tokens.db.close()
    if args.json:
        return print_json(rows)
    if not rows:
        print("no API tokens yet; `aiinfra token create --role predict` makes one")
        return

    def at(ts: Any) -> str:
        return when(ts) if ts is not None else "-"

    print(f"{'ID':<8}  {'ROLE':<8}  {'MODEL':<16}  {'FOR':<16}  {'CREATED':<19}  {'EXPIRES':<19}  {'LAST USED':<19}  "
          "REVOKED")
    for r in rows:
        print(f"{r['id']:<8}  {r['role']:<8}  {r['model'] or '(any)':<16}  {(r['holder'] or '-')[:16]:<16}  "
              f"{at(r['created_at']):<19}  {at(r['expires_at']):<19}  {at(r['last_used_at']):<19}  {at(r['revoked_at'])}")


def _token_revoke(args: argparse.Namespace) -> None:
    tokens = _tokens()
    try:
        tokens.revoke(args.id)
    finally:
        tokens.db.close()
    # Running servers reread their tokens every few seconds (TokenStore.refresh_s).
    print(f"revoked token {args.id}; servers refuse it within seconds")


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
    tcreate = token.add_parser("create", help="print a new bearer token (stored hashed; shown once)")
    tcreate.add_argument("--role", default="predict", choices=ROLES)
    tcreate.add_argument("--model", default=None, help="the one model the token may act on (default: any)")
    tcreate.add_argument("--for", dest="holder", default=None, metavar="NAME",
                         help="whom it is issued to (a policy with distinct_people counts approvals by this name)")
    tcreate.add_argument("--expires", default=None, metavar="DURATION",
                         help="lifetime, e.g. 30d, 12h, 90m, 45s (default: never expires)")
    tcreate.add_argument("--json", action="store_true", help="print {id, token, role, model, expires_at}")
    tcreate.set_defaults(func=_token_create)
    tlist = token.add_parser("list", help="tokens: id, role, model scope, created, expires, last used, revoked (never secrets)")
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=_token_list)
    trevoke = token.add_parser("revoke", help="refuse a token from now on (running servers within seconds)")
    trevoke.add_argument("id", help="the token's id (the part after aii_, as `token list` shows it)")
    trevoke.set_defaults(func=_token_revoke)
