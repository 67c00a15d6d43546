"""``aiinfra serve``: HTTP and gRPC inference on Ray Serve, one endpoint for many models."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from aiinfra.cli import common  # cluster_running looked up at call time: the tests replace it
from aiinfra.cli.common import print_json
from aiinfra.cluster import cluster_status
from aiinfra.config import PlatformConfig, load_config
from aiinfra.errors import InvalidInput, ServiceUnavailable

APP = "aiinfra"  # the CLI's Serve application, on route prefix "/"
SETTLE_S = 120.0  # how long deploy / remove wait for the running endpoint to take the change


def _cluster(config: PlatformConfig) -> None:
    if not common.cluster_running(config):
        raise ServiceUnavailable("no Ray cluster is running here: start one with `aiinfra up` (or set RAY_ADDRESS)")


def _served_now(serve: Any) -> dict[str, Any] | None:
    """What the running endpoint serves (``ModelServer.served``), or None when it does not run."""
    if APP not in serve.status().applications:
        return None
    return serve.get_app_handle(APP).served.remote().result(timeout_s=30)


def _wait(serve: Any, done: Any, what: str, ref: str | None = None) -> dict[str, Any]:
    """Poll the endpoint until ``done(served)`` (the replicas take a change on their follower's next step);
    a router that could not start for ``ref`` fails it at once, with the replica's reason."""
    deadline, served = time.monotonic() + SETTLE_S, None
    while time.monotonic() < deadline:
        served = _served_now(serve)
        if served is not None and done(served):
            return served
        failed = [p for p in ((served or {}).get("problems") or {}).values() if p["ref"] == ref]
        if failed:
            raise InvalidInput(f"the endpoint cannot serve {ref}: {failed[0]['error']}")
        time.sleep(0.5)
    problems = (served or {}).get("problems") or {}
    detail = "; ".join(f"{n}: {p['error']}" for n, p in problems.items())
    raise ServiceUnavailable(f"the endpoint did not {what} within {SETTLE_S:.0f} s"
                             + (f" ({detail})" if detail else "") + "; `aiinfra serve status` shows what it serves")


def _serve_deploy(args: argparse.Namespace) -> None:
    config = load_config()
    _cluster(config)
    # Ray (and the Serve app, which imports it) inside, after cluster_running() set RAY_AUTH_MODE: Ray
    # reads it once, when imported. The platform too: it loads pyarrow and pandas, which `aiinfra --help` must not.
    from ray import serve

    from aiinfra.platform import connect
    from aiinfra.registry.client import default_principal
    from aiinfra.serving.app import build_app
    from aiinfra.serving.endpoint import ServedModels
    from aiinfra.serving.grpc_oip import start_options
    from aiinfra.storage import open_metadata_db

    with connect(config) as platform:
        version = platform.registry.get(args.ref)  # an unknown model fails here, before Serve is touched
        if version.signature is None:
            raise InvalidInput(f"{version.ref} has no signature; register it with one to serve it")
        serve.start(**start_options(config))
        db = open_metadata_db(config.metadata_url)
        try:
            added = ServedModels(db)
            running = _served_now(serve)
            if running is None:
                # A new endpoint serves exactly this model: what an endpoint deleted earlier served is forgotten.
                added.clear(APP)
                added.add(APP, args.ref, who=default_principal())
                print(f"starting the Serve app {APP!r} with {args.ref} (now {version.ref}) ...", file=sys.stderr, flush=True)
                serve.run(build_app(config), name=APP, route_prefix="/")  # returns once it is healthy
                served = _wait(serve, lambda s: version.name in s["models"], f"serve {args.ref}", args.ref)
            else:
                declared = running["models"].get(version.name, {}).get("declared")
                if declared:
                    raise InvalidInput(f"{version.name!r} is declared by the Serve app {APP!r} itself (its builder's "
                                       "args); change it there and redeploy the app")
                added.add(APP, args.ref, who=default_principal())
                print(f"adding {args.ref} (now {version.ref}) to the running endpoint ...", file=sys.stderr, flush=True)
                served = _wait(serve, lambda s: s["models"].get(version.name, {}).get("ref") == args.ref,
                               f"serve {args.ref}", args.ref)
        finally:
            db.close()
    base = f"http://{config.serve.host}:{config.serve.port}"
    others = sorted(n for n in served["models"] if n != version.name)
    result = {"app": APP, "ref": args.ref, "version": version.ref, "url": f"{base}/predict/{version.name}",
              "oip": f"{base}/v2/models/{version.name}", "also_serving": others}
    if args.json:
        return print_json(result)
    print(f"serving {args.ref} ({version.ref}) at {result['url']} and {result['oip']}"
          + (f"; the endpoint also serves {', '.join(others)}" if others else ""))


def _serve_remove(args: argparse.Namespace) -> None:
    config = load_config()
    _cluster(config)
    from ray import serve

    from aiinfra.platform import connect
    from aiinfra.serving.endpoint import ServedModels
    from aiinfra.storage import open_metadata_db

    with connect(config):
        running = _served_now(serve)
        if running is not None and running["models"].get(args.name, {}).get("declared"):
            raise InvalidInput(f"{args.name!r} is declared by the Serve app {APP!r} itself (its builder's args); "
                               "change it there and redeploy the app")
        db = open_metadata_db(config.metadata_url)
        try:
            ref = ServedModels(db).remove(APP, args.name)
        finally:
            db.close()
        if running is not None:
            print(f"removing {args.name} ({ref}) from the endpoint ...", file=sys.stderr, flush=True)
            served = _wait(serve, lambda s: args.name not in s["models"], f"stop serving {args.name}")
        else:
            served = {"models": {}}
    result = {"app": APP, "removed": args.name, "ref": ref, "still_serving": sorted(served["models"])}
    if args.json:
        return print_json(result)
    print(f"removed {args.name} ({ref}); the endpoint serves "
          + (", ".join(result["still_serving"]) or "no model now (`aiinfra serve deploy NAME@champion` adds one)"))


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
        replicas = ", ".join(f"{d}: {r['replicas']}" for d, r in a["deployments"].items())
        serving = a.get("serving") or {}
        models = serving.get("models") or {}
        print(f"{app:<12} {a['status']:<10} {len(models)} model(s); replicas {replicas}")
        for name, m in models.items():
            canary = m.get("canary")
            print(f"  {name:<20} {m['model']}@{m['version']} ({m['ref']})"
                  + (f"; canary v{canary['version']} at {canary['share']:.0%}" if canary else ""))
        for name, p in (serving.get("problems") or {}).items():
            print(f"  {name:<20} NOT SERVING {p['ref']}: {p['error']}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve_cmd = sub.add_parser("serve", help="HTTP and gRPC inference on Ray Serve").add_subparsers(
        dest="serve_command", required=True)
    sdeploy = serve_cmd.add_parser(
        "deploy", help="serve NAME@ALIAS (it follows the alias) or NAME@VERSION on the running cluster's endpoint, "
                       "beside the models it serves already (the same NAME: replaced)")
    sdeploy.add_argument("ref")
    sdeploy.add_argument("--json", action="store_true")
    sdeploy.set_defaults(func=_serve_deploy)
    sremove = serve_cmd.add_parser("remove", help="take one model off the endpoint; the others go on serving")
    sremove.add_argument("name")
    sremove.add_argument("--json", action="store_true")
    sremove.set_defaults(func=_serve_remove)
    sstatus = serve_cmd.add_parser("status", help="Serve apps, the models and versions each serves, canaries, replicas")
    sstatus.add_argument("--json", action="store_true")
    sstatus.set_defaults(func=_serve_status)
