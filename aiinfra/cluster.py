"""``aiinfra up``, ``down`` and ``status``: a local Ray head with the platform's services.

``up`` starts a head from this project's virtual environment (so ``ray job submit``
entrypoints find aiinfra), with the dashboard and Ray's token authentication on, then the
platform actors and Serve's HTTP proxy; it records what it started in
``$AIINFRA_HOME/cluster.json``. ``down`` stops exactly those processes, not any other
Ray on the machine. A running cluster is reused, never started twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from aiinfra.cluster_access import (
    cluster_state_file,
    ensure_ray_token,
    foreign_clusters,
    running_cluster,
    use_cluster_auth,
)
from aiinfra.config import PlatformConfig
from aiinfra.errors import ServiceUnavailable
from aiinfra.redaction import redact_uri

__all__ = ["cluster_status", "down", "up"]

SERVICES = ("registry", "feature_store")


def up(config: PlatformConfig, *, port: int = 6379, dashboard_port: int = 8265, num_cpus: int | None = None,
       out: Any = sys.stdout) -> dict[str, Any]:
    if "ray" not in sys.modules:
        # Ray reads its auth mode when it is imported: decide before anything imports it.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    existing = running_cluster(config)
    started = existing is None
    for other in foreign_clusters():
        print(f"a Ray cluster of another user runs at {other}: not joined", file=out, flush=True)
    auth_mode = "token"
    if existing:
        auth_mode = _recorded_auth_mode(config, existing)
        if auth_mode is None:
            # Not started by `aiinfra up` here: nothing says whether it demands a token, so nothing is claimed.
            auth_mode = "unknown"
            print(f"a Ray cluster that `aiinfra up` did not start is running at {existing}: reusing it; aiinfra "
                  "cannot confirm it requires Ray's token (if it does not, anyone who reaches its ports can run "
                  "code on it). To have one that does, stop it and run `aiinfra up` again.", file=out, flush=True)
        else:
            print(f"a Ray cluster is already running at {existing}: reusing it", file=out, flush=True)
        address = existing
    else:
        print(f"Ray token: {ensure_ray_token()}", file=out, flush=True)
        ray_bin = str(Path(sys.executable).with_name("ray"))
        # No --node-ip-address=127.0.0.1: Ray 2.60's GCS and raylet listen on every interface whatever it
        # says (checked), so it would only claim a protection it does not give; Ray's token (made above,
        # 0600) is what guards those ports, and the dashboard is bound to loopback.
        cmd = [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--disable-usage-stats"]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        print(f"starting a Ray head on port {port} ...", file=out, flush=True)
        # Job entrypoints run with the head's PATH: put this environment's bin first, so that
        # `python jobs/x.py` finds the interpreter aiinfra is installed in.
        venv_bin = str(Path(sys.executable).parent)
        env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
               "VIRTUAL_ENV": str(Path(venv_bin).parent)}
        if config.serve.haproxy:
            env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise ServiceUnavailable(f"`ray start --head` failed (exit {done.returncode}):\n{tail}")
        address = f"127.0.0.1:{port}"

    # Ray here, not at the top: the CLI imports this module at startup, and Ray reads RAY_AUTH_MODE (set
    # just above) once, when it is imported.
    import ray
    from ray import serve

    # Here, not at the top: the platform loads the stores (pyarrow, pandas), and the CLI imports this
    # module at startup for `status` and `down`, which do not need them.
    from aiinfra.platform import connect
    from aiinfra.serving.grpc_oip import start_options

    if started:
        config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        cluster_state_file(config).write_text(json.dumps({"address": address, "port": port, "auth_mode": "token",
                                                   "session_dir": None, "started_by_up": True}))
    cfg = config.model_copy(update={"ray_address": address})
    platform = connect(cfg)
    try:
        serve.start(**start_options(config))
        session_dir = ray._private.worker._global_node.get_session_dir_path()  # private, pinned
        dashboard = ray._private.worker.get_dashboard_url()  # private, pinned
    finally:
        platform.close()
        ray.shutdown()
    info = {
        "address": address,
        "session_dir": session_dir,
        "port": int(address.rsplit(":", 1)[1]),
        "dashboard_url": f"http://{dashboard}" if dashboard and "://" not in dashboard else (dashboard or None),
        "serve_url": f"http://{config.serve.host}:{config.serve.port}",
        "token_file": str(config.token_file),
        "started_by_up": started,
        "started_at": time.time(),
        "auth_mode": auth_mode,
    }
    if started:
        config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        cluster_state_file(config).write_text(json.dumps(info, indent=2))
    return info


def _recorded_auth_mode(config: PlatformConfig, address: str) -> str | None:
    """The auth mode `aiinfra up` recorded when it started the cluster at ``address``; None if it did not."""
    try:
        info = json.loads(cluster_state_file(config).read_text())
    except (OSError, ValueError):
        return None
    return info.get("auth_mode") if info.get("address") == address and info.get("started_by_up") else None


def _cluster_processes(session_dir: str, port: int) -> list[Any]:
    marker, address = Path(session_dir).name, f":{port}"
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if marker in cmd or (address in cmd and "ray" in cmd):
            roots.append(proc)
    found: dict[int, Any] = {}
    for proc in roots:
        found[proc.pid] = proc
        try:
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def down(config: PlatformConfig, *, out: Any = sys.stdout, timeout_s: float = 20.0) -> bool:
    """Stop the cluster ``up`` started; returns whether there was one. Nothing else is touched."""
    state = cluster_state_file(config)
    if not state.exists():
        print("no cluster started by `aiinfra up` here; nothing to stop", file=out)
        return False
    info = json.loads(state.read_text())
    procs = _cluster_processes(info["session_dir"], info["port"])
    print(f"stopping the Ray cluster at {info['address']} ({len(procs)} processes) ...", file=out, flush=True)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    # `ray stop` would also forget the cluster: without this, a later ray.init() with no address
    # keeps trying to join the dead one it finds in this file.
    pointer = Path(info["session_dir"]).parent / "ray_current_cluster"
    try:
        if pointer.read_text().strip().endswith(f":{info['port']}"):
            pointer.unlink()
    except OSError:
        pass
    state.unlink()
    print("stopped", file=out)
    return True


def cluster_status(config: PlatformConfig) -> dict[str, Any]:
    """Services, Serve applications with their replicas and the models they serve, and the URLs."""
    use_cluster_auth(config)
    address = running_cluster(config)
    state = cluster_state_file(config)
    info = json.loads(state.read_text()) if state.exists() else {}
    # Which shared state this cluster uses, without credentials: on several nodes, the first thing to check.
    stores = {"metadata_url": redact_uri(config.metadata_url), "storage_root": redact_uri(config.storage_root)}
    if address is None:
        return {"running": False, "address": None, "services": {}, "serve": {}, **stores}
    # Ray here, after use_cluster_auth: Ray reads RAY_AUTH_MODE once, when it is imported.
    import ray
    from ray import serve

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=address, namespace=config.namespace, log_to_driver=False)
    try:
        services = {}
        for name in SERVICES:
            try:
                handle = ray.get_actor(name, namespace=config.namespace)
                services[name] = {"alive": True, "pid": ray.get(handle.pid.remote(), timeout=10)}
            except ValueError:
                services[name] = {"alive": False}
            except Exception as e:  # noqa: BLE001 - report, do not fail the whole status
                services[name] = {"alive": False, "error": type(e).__name__}
        apps: dict[str, Any] = {}
        try:
            st = serve.status()
            for app_name, app in st.applications.items():
                deployments = {d: {"status": str(dep.status), "replicas": dict(dep.replica_states)}
                               for d, dep in app.deployments.items()}
                entry: dict[str, Any] = {"status": str(app.status), "deployments": deployments}
                try:
                    entry["serving"] = serve.get_app_handle(app_name).served.remote().result(timeout_s=10)
                except Exception:  # noqa: BLE001 - an app that is not ours, or not ready
                    pass
                apps[app_name] = entry
        except Exception:  # noqa: BLE001 - Serve not started on this cluster
            pass
    finally:
        if owns_ray:
            ray.shutdown()
    dashboard = info.get("dashboard_url")
    return {  # shown by `aiinfra status`: addresses without any credentials (RAY_ADDRESS may carry some)
        "running": True,
        "address": redact_uri(address),
        "started_by_up": bool(info),
        "dashboard_url": dashboard and redact_uri(dashboard),
        "serve_url": f"http://{config.serve.host}:{config.serve.port}",
        "token_file": str(config.token_file),
        **stores,
        "services": services,
        "serve": apps,
    }
