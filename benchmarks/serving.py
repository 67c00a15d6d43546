"""Serving: requests/s and p50/p99 latency of POST /predict/{name}, Ray Serve against plain uvicorn.

The full inference path in both: bearer-token check (TokenStore), JSON body, the predict request's
validation against the signature, the model's fitted transforms, the torch model, postprocessing.

- baseline: uvicorn + FastAPI in one process serving the same `Predictor` (same model files from the
  registry, same TokenStore check, same body checks);
- Serve: `build_app(config, "bench@champion")` on Ray Serve's default proxy (the champion answered in
  the router's process: `serve.champion_in_router`, the default);
- Serve + HAProxy: the same app behind HAProxy (`RAY_SERVE_ENABLE_HA_PROXY=1`, set before Ray starts);
- Serve + HAProxy, champion in a model deployment: `champion_in_router: false`, the router calls the
  champion's `ModelVersions` deployment (@serve.batch) over Serve's gRPC transport, coalescing the requests
  that wait for a call (`serve.model_calls_in_flight`, 2); and the same with one call per request
  (`model_calls_in_flight: 0`, as before the coalescing).

Each configuration runs in its own child process, one after the other (never two Ray clusters at
once). Drift sampling (`monitoring.enabled`) is off in Serve, as the baseline has none. The model: a
small MLP ([32, 16]) on the churn demo's features, fitted in-process on 5,000 `make_customers` rows
(a few seconds; the distributed trainer's start-up alone would take longer), registered with its signature.
Load: aiohttp clients in the measuring process, 1 and 16 concurrent, one row per request.

Targets: Serve throughput at 16 clients at least 0.30x the baseline; p50 added at 1 client at most 1.5 ms.

    .venv/bin/python benchmarks/serving.py [--seconds 4] [--skip-haproxy] [--kinds plain,haproxy-deployment,...]
"""


import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import phased_load
from fastapi import Request  # module level: FastAPI resolves route annotations through the module's globals

MODEL = "bench"
REF = f"{MODEL}@champion"
ROWS = [
    {"tenure_months": 2.0, "monthly_charges": 150.0, "support_calls": 6, "plan": "basic", "region": "north"},
    {"tenure_months": 60.0, "monthly_charges": 30.0, "support_calls": 0, "plan": "premium", "region": "north"},
]
CONCURRENCY = (1, 16)
TARGET_RATIO, TARGET_ADDED_MS = 0.30, 1.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KINDS = {"serve": "Ray Serve, default proxy", "haproxy": "Ray Serve, HAProxy ingress (the default)",
         "haproxy-deployment": "Ray Serve, HAProxy, champion in a model deployment (calls coalesced)",
         "haproxy-deployment-one": "Ray Serve, HAProxy, champion in a model deployment (coalesced, 1 call in flight)",
         "haproxy-deployment-single": "Ray Serve, HAProxy, champion in a model deployment (a call per request)"}
IN_FLIGHT = {"haproxy-deployment-one": 1, "haproxy-deployment-single": 0}


def _config(home: str, port: int, champion_in_router: bool = True, calls_in_flight: int | None = None):
    from aiinfra.config import load_config

    base = load_config(environ={}, home=home)
    serve = {"port": port, "champion_in_router": champion_in_router}
    if calls_in_flight is not None:
        serve["model_calls_in_flight"] = calls_in_flight
    return base.model_copy(update={"serve": base.serve.model_copy(update=serve),
                                   "monitoring": base.monitoring.model_copy(update={"enabled": False})})


# -- set-up: model, registry, token (no Ray) ---------------------------------------------------------

def fit_churn_mlp(df, hidden: list[int], *, epochs: int, batch: int, lr: float):
    """An MLP on the churn demo's features, fitted in this process: (spec, module, fitted transforms, final loss)."""
    import numpy as np
    import torch

    from aiinfra.data.synthetic import LABEL
    from aiinfra.data.transforms import fit_features, load_feature_spec
    from aiinfra.demo.configs import example_config
    from aiinfra.training.model_dir import ModelSpec
    from aiinfra.training.models import build_model

    pre = fit_features(df, load_feature_spec(example_config("customers_features.yaml")))
    x = torch.from_numpy(pre.transform(df))
    y = torch.from_numpy(df[LABEL].to_numpy(np.float32)).reshape(-1, 1)
    torch.manual_seed(7)
    spec = ModelSpec(family="tabular_mlp", params={"hidden": hidden}, input_dim=pre.output_dim, output_dim=1)
    model = build_model(spec.family, spec.input_dim, 1, spec.params)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            opt.zero_grad()
            loss_fn(model(x[i:i + batch]), y[i:i + batch]).backward()
            opt.step()
    return spec, model, pre, float(loss_fn(model(x), y).detach())


def prepare(home: Path) -> str:
    """Fit and register `bench` (alias champion) in `home`; return a `predict` token."""
    from aiinfra.data.synthetic import make_customers
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.platform import open_local
    from aiinfra.storage import open_metadata_db
    from aiinfra.training.model_dir import save_model_dir
    from aiinfra.training.tabular import signature_for

    spec, model, pre, loss = fit_churn_mlp(make_customers(5_000, seed=7), [32, 16], epochs=30, batch=500, lr=0.01)
    model_dir = save_model_dir(home / "model", spec, model.state_dict(), pre)
    config = _config(str(home), 8000)
    with open_local(config) as p:
        v = p.registry.register(MODEL, model_dir, metrics={"train_loss": loss}, signature=signature_for(pre))
        p.registry.set_alias(MODEL, v.version, "champion")
    db = open_metadata_db(config.metadata_url)
    try:
        return TokenStore(db).create("predict", who="benchmark")
    finally:
        db.close()


# -- the load generator -------------------------------------------------------------------------------

async def _load(url: str, token: str, clients: int, seconds: float, warmup_s: float, *, body: bytes | None = None,
                extra_headers: dict[str, str] | None = None) -> dict:
    """``clients`` concurrent clients posting ``body`` (default: one /predict row) for ``seconds`` after a warm-up."""
    import aiohttp

    body = json.dumps({"instances": [ROWS[0]]}).encode() if body is None else body
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(extra_headers or {})}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def call() -> int | None:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                return None if r.status == 200 else r.status

        return await phased_load(call, clients, seconds, warmup_s)


def measure(label: str, url: str, token: str, seconds: float) -> dict[int, dict]:
    import httpx

    deadline = time.monotonic() + 60
    while True:  # the server answers a real request before the clock starts
        try:
            r = httpx.post(url, json={"instances": ROWS}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            if r.status_code == 200:
                break
            raise RuntimeError(f"{label}: {r.status_code} {r.text[:300]}")
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    out = {}
    for clients in CONCURRENCY:
        print(f"  {label}: {clients} client(s), {seconds:.0f} s (load average before: {os.getloadavg()[0]:.2f}) ...", flush=True)
        out[clients] = asyncio.run(_load(url, token, clients, seconds, warmup_s=1.0))
        r = out[clients]
        print(f"    {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
              + (f", non-200: {r['errors']}" if r["errors"] else ""), flush=True)
    return out


# -- the three configurations, each in a child process ---------------------------------------------------

def run_plain_server(home: str, port: int) -> None:
    """uvicorn + FastAPI, one process: the same Predictor and TokenStore as ModelServer."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from aiinfra.errors import AiInfraError, InvalidInput, NotFound, PayloadTooLarge
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.inference.predictor import Predictor
    from aiinfra.platform import open_local
    from aiinfra.storage import open_metadata_db

    torch.set_num_threads(1)  # as in a Serve replica (Ray sets OMP_NUM_THREADS=1 for fractional CPUs)
    config = _config(home, port)
    p = open_local(config)
    version = p.registry.get(REF)
    predictor = Predictor(version, p.registry.download(version, tempfile.mkdtemp(prefix="aiinfra-plain-")))
    tokens = TokenStore(open_metadata_db(config.metadata_url))
    limit = config.serve.max_body_bytes
    app = FastAPI()

    @app.exception_handler(AiInfraError)
    async def _error(request: Request, exc: AiInfraError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": exc.message})

    @app.post("/predict/{name}")
    async def predict(name: str, request: Request) -> dict:
        tokens.verify(request.headers.get("authorization")).require("predict")
        if name != version.name:
            raise NotFound(f"model {name!r} is not served here")
        raw = await request.body()
        if len(raw) > limit:
            raise PayloadTooLarge("request body is over the limit")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidInput(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict) or set(body) != {"instances"}:
            raise InvalidInput("send {'instances': [...]}")
        predictions = predictor.predict(body["instances"])
        return {"predictions": predictions, "model": version.name, "version": version.version,
                "request_id": request.headers.get("x-request-id") or os.urandom(16).hex()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_plain(home: str, token: str, seconds: float) -> dict:
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--child", "plain-server", "--home", home, "--port", str(port)])
    try:
        return measure("plain uvicorn", f"http://127.0.0.1:{port}/predict/{MODEL}", token, seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _floor_app():
    """Serve's own floor: an empty FastAPI route (reads the body, returns a constant) on the same proxy."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16)
    @serve.ingress(api)
    class Floor:
        @api.post("/predict/{name}")
        async def predict(self, name: str, request: Request) -> dict:
            await request.body()
            return {"predictions": [], "model": name}

    return Floor.bind()


def run_serve(home: str, token: str, seconds: float, local: bool = True, calls_in_flight: int | None = None) -> dict:
    import ray

    from aiinfra.cluster_access import clear_stale_cluster_pointer

    haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    label = ("Serve + HAProxy" if haproxy else "Serve (default proxy)") + ("" if local else ", champion in a deployment")
    port = _free_port()
    config = _config(home, port, champion_in_router=local, calls_in_flight=calls_in_flight)
    clear_stale_cluster_pointer()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=config.namespace)
    try:
        from ray import serve

        from aiinfra.platform import connect
        from aiinfra.serving.app import build_app

        p = connect(config)
        t0 = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": config.serve.request_timeout_s})
        serve.run(build_app(config, REF), name="aiinfra", route_prefix="/")
        print(f"  {label}: app up in {time.perf_counter() - t0:.1f} s on port {port}", flush=True)
        try:
            out = measure(label, f"http://127.0.0.1:{port}/predict/{MODEL}", token, seconds)
            if not local:  # the floor does not depend on where the champion answers: measured once per proxy
                return {str(c): r for c, r in out.items()}
            serve.delete("aiinfra")
            serve.run(_floor_app(), name="floor", route_prefix="/floor")
            floor = measure(f"{label}, empty route", f"http://127.0.0.1:{port}/floor/predict/{MODEL}", token, seconds)
            return {**{str(c): r for c, r in out.items()}, **{f"floor-{c}": r for c, r in floor.items()}}
        finally:
            serve.shutdown()
            p.close()
    finally:
        ray.shutdown()


def child(kind: str, home: str, token: str, seconds: float, out: Path) -> dict | None:
    """Run one configuration in a fresh process; its figures come back as JSON in `out`."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    if kind.startswith("haproxy"):
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"  # read when Ray starts: it must be in the environment before
    cmd = [sys.executable, __file__, "--child", kind, "--home", home, "--token", token, "--seconds", str(seconds),
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, timeout=300)
    if proc.returncode != 0 or not out.exists():
        return None
    data = json.loads(out.read_text())
    floor = {int(k.removeprefix("floor-")): v for k, v in data.items() if k.startswith("floor-")}
    return {**{int(k): v for k, v in data.items() if not k.startswith("floor-")}, **({"floor": floor} if floor else {})}


def _row(name: str, clients: int, r: dict, base: dict | None) -> str:
    ratio = f"{r['rps'] / base[clients]['rps']:.2f}" if base else "-"
    added = f"{r['p50_ms'] - base[clients]['p50_ms']:+.2f}" if base else "-"
    return f"| {name} | {clients} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ratio} | {added} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point (after 1 s of warm-up)")
    parser.add_argument("--skip-haproxy", action="store_true")
    parser.add_argument("--kinds", default=None, help="only these configurations, comma-separated (the baseline always runs)")
    parser.add_argument("--child", choices=["plain", "plain-server", *KINDS], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "plain-server":
        run_plain_server(args.home, args.port)
        return
    if args.child:
        if args.child == "plain":
            result = run_plain(args.home, args.token, args.seconds)
        else:
            result = run_serve(args.home, args.token, args.seconds, local=not args.child.startswith("haproxy-deployment"),
                               calls_in_flight=IN_FLIGHT.get(args.child))
        Path(args.out).write_text(json.dumps(result))
        return

    home = Path(tempfile.mkdtemp(prefix="aiinfra-bench-serving-"))
    print(f"state in {home}; fitting and registering the model ...", flush=True)
    token = prepare(home)
    results: dict[str, dict | None] = {}
    wanted = set(args.kinds.split(",")) | {"plain"} if args.kinds else None
    kinds = [(k, n) for k, n in [("plain", "plain uvicorn + FastAPI, 1 process (baseline)"), *KINDS.items()]
             if wanted is None or k in wanted]
    for kind, name in kinds:
        if kind.startswith("haproxy") and args.skip_haproxy:
            continue
        print(f"{name}:", flush=True)
        results[kind] = child(kind, str(home), token, args.seconds, home / f"{kind}.json")
        if results[kind] is None:
            print(f"  {name}: FAILED (see the output above)", flush=True)

    import ray

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}, "
          f"Ray {ray.__version__}; date: {time.strftime('%Y-%m-%d')}; {args.seconds:.0f} s per point after 1 s warm-up")
    print()
    base = results.get("plain")
    if base is None:
        raise SystemExit("the baseline did not run; no comparison")
    print("| server | clients | req/s | p50 ms | p99 ms | req/s vs plain | p50 added ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, name in kinds:
        r = results.get(kind)
        if r is None:
            why = "skipped (--skip-haproxy)" if kind not in results else "did not work here (see the output above)"
            print(f"| {name} | - | {why} | | | | |")
            continue
        for clients in CONCURRENCY:
            print(_row(name, clients, r[clients], None if kind == "plain" else base))
    for kind, name in kinds[1:]:
        floor = (results.get(kind) or {}).get("floor")
        for clients in CONCURRENCY if floor else ():
            print(_row(f"{name}, empty FastAPI route (Serve's floor)", clients, floor[clients], base))
    print()
    for kind, name in kinds[1:]:
        r = results.get(kind)
        if r is None:
            continue
        ratio = r[16]["rps"] / base[16]["rps"]
        added = r[1]["p50_ms"] - base[1]["p50_ms"]
        print(f"- {name}: throughput at 16 clients {ratio:.2f}x plain (target >= {TARGET_RATIO:.2f}: "
              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); p50 added at 1 client {added:.2f} ms "
              f"(target <= {TARGET_ADDED_MS} ms: {'met' if added <= TARGET_ADDED_MS else 'NOT met'})")


if __name__ == "__main__":
    main()
