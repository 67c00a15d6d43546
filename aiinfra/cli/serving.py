"""``aiinfra serve``: HTTP inference on Ray Serve."""

from __future__ import annotations

import argparse
import sys

from aiinfra.cli import common  # cluster_running looked up at call time: the tests replace it
from aiinfra.cli.common import print_json
from aiinfra.cluster import cluster_status
from aiinfra.config import load_config
from aiinfra.errors import InvalidInput, ServiceUnavailable


def _serve_deploy(args: argparse.Namespace) -> None:
    config = load_config()
    if not common.cluster_running(config):
        raise ServiceUnavailable("no Ray cluster is running here: start one with `aiinfra up` (or set RAY_ADDRESS)")
    # Ray (and the Serve app, which imports it) inside, after cluster_running() set RAY_AUTH_MODE: Ray
    # reads it once, when imported. The platform too: it loads pyarrow and pandas, which `aiinfra --help` must not.
    from ray import serve

    from aiinfra.platform import connect
    from aiinfra.serving.app import build_app
    from aiinfra.serving.grpc_oip import start_options

    with connect(config) as platform:
        version = platform.registry.get(args.ref)  # an unknown model fails here, before Serve is touched
        if version.signature is None:
            raise InvalidInput(f"{version.ref} has no signature; register it with one to serve it")
        serve.start(**start_options(config))
        print(f"deploying {args.ref} (now {version.ref}) as Serve app 'aiinfra' ...", file=sys.stderr, flush=True)
        serve.run(build_app(config, args.ref), name="aiinfra", route_prefix="/")  # returns once it is healthy
    base = f"http://{config.serve.host}:{config.serve.port}"
    result = {"app": "aiinfra", "ref": args.ref, "version": version.ref, "url": f"{base}/predict/{version.name}",
              "oip": f"{base}/v2/models/{version.name}"}
    if args.json:
        return print_json(result)
    print(f"serving {args.ref} ({version.ref}) at {result['url']} and {result['oip']}")


def _serve_status(args: argparse.Namespace) -> None:
    st = cluster_status(load_config())
    apps = st.get("serve", {})
    if args.json:
        return print_json({"running": st["running"], "serve_url": st.get("serve_url"), "apps": apps})
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve_cmd = sub.add_parser("serve", help="HTTP inference on Ray Serve").add_subparsers(dest="serve_command", required=True)
    sdeploy = serve_cmd.add_parser("deploy", help="serve NAME@ALIAS (it follows the alias) or NAME@VERSION on the running cluster")
    sdeploy.add_argument("ref")
    sdeploy.add_argument("--json", action="store_true")
    sdeploy.set_defaults(func=_serve_deploy)
    sstatus = serve_cmd.add_parser("status", help="Serve apps, the version each serves, canaries, replicas")
    sstatus.add_argument("--json", action="store_true")
    sstatus.set_defaults(func=_serve_status)
