"""A many-model endpoint: latency of a cache hit and of a miss, against a one-model endpoint, in one run.

One Ray Serve endpoint serves 20 small models (the churn MLP of benchmarks/serving.py, registered under 20
names: each its own registered version, downloaded, hash-checked and loaded on its own), with
``serve.max_models_per_replica: 5``: at most five versions loaded per replica, the least recently asked
unloaded past that. The champions answer in the router (``serve.champion_in_router``, the default), so the
cache is the router's ``LoadedModels``; the model deployments use Serve's ``@serve.multiplexed`` with the
same bound.

Measured, one client at a time, one row per request (POST /predict/{name}), after a warm-up:
- one-model endpoint (baseline): the same app built for one model;
- hit: the multi-model endpoint, requests cycling over 5 models (all loaded);
- miss: requests cycling over all 20 models, so each one names the least recently used (with a bound of 5,
  every request loads its version: download from the artifact store, SHA-256 check, torch load);
and throughput at 16 clients for the one-model endpoint and for hits.

    .venv/bin/python benchmarks/multi_model.py [--requests 400]
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import phased_load  # noqa: E402
from serving import ROWS, _config, _free_port, fit_churn_mlp  # noqa: E402

MODELS = 20
CACHE = 5
PREFIX = "mm"


def prepare(home: Path) -> str:
    """Fit one MLP, register it under MODELS names (alias champion each); a `predict` token."""
    from aiinfra.data.synthetic import make_customers
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.platform import open_local
    from aiinfra.storage import open_metadata_db
    from aiinfra.training.model_dir import save_model_dir
    from aiinfra.training.tabular import signature_for

    spec, model, pre, _ = fit_churn_mlp(make_customers(5_000, seed=7), [32, 16], epochs=10, batch=500, lr=0.01)
    model_dir = save_model_dir(home / "model", spec, model.state_dict(), pre)
    config = _config(str(home), 8000)
    with open_local(config) as p:
        for i in range(MODELS):
            v = p.registry.register(f"{PREFIX}{i:02d}", model_dir, signature=signature_for(pre))
            p.registry.set_alias(v.name, v.version, "champion")
    db = open_metadata_db(config.metadata_url)
    try:
        return TokenStore(db).create("predict", who="benchmark")
    finally:
        db.close()


def sequential(base: str, names: list[str], token: str, n: int) -> dict:
    """``n`` requests from one client, cycling over ``names``: latency percentiles (ms)."""
    import httpx

    body = {"instances": [ROWS[0]]}
    out = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for i in range(n + len(names)):  # the first pass over the names is a warm-up
            t0 = time.perf_counter()
            r = client.post(f"/predict/{names[i % len(names)]}", json=body)
            took = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code} {r.text[:300]}")
            if i >= len(names):
                out.append(took)
    out.sort()
    return {"p50_ms": statistics.median(out), "p99_ms": out[min(len(out) - 1, int(len(out) * 0.99))],
            "mean_ms": statistics.fmean(out), "n": len(out)}


def concurrent(base: str, names: list[str], token: str, clients: int, seconds: float) -> dict:
    import aiohttp

    body = json.dumps({"instances": [ROWS[0]]}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def run() -> dict:
        connector = aiohttp.TCPConnector(limit=clients)
        counter = {"i": 0}
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def call():
                counter["i"] += 1
                async with session.post(f"{base}/predict/{names[counter['i'] % len(names)]}", data=body,
                                        headers=headers) as r:
                    await r.read()
                    return None if r.status == 200 else r.status

            return await phased_load(call, clients, seconds, 1.0)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="measured requests per latency point")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per throughput point")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="aiinfra-bench-multi-"))
    print(f"state in {home}; fitting one model and registering it under {MODELS} names ...", flush=True)
    token = prepare(home)

    import ray
    from ray import serve

    from aiinfra.cluster_access import clear_stale_cluster_pointer
    from aiinfra.platform import connect
    from aiinfra.serving.app import build_app

    port = _free_port()
    config = _config(str(home), port)
    config = config.model_copy(update={"serve": config.serve.model_copy(update={"max_models_per_replica": CACHE})})
    names = [f"{PREFIX}{i:02d}" for i in range(MODELS)]
    clear_stale_cluster_pointer()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=config.namespace)
    results: dict[str, dict] = {}
    try:
        p = connect(config)
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
        base = f"http://127.0.0.1:{port}"
        try:
            print("one-model endpoint (baseline) ...", flush=True)
            serve.run(build_app(config, f"{names[0]}@champion"), name="one", route_prefix="/one")
            results["one model"] = sequential(f"{base}/one", names[:1], token, args.requests)
            results["one model, 16 clients"] = concurrent(f"{base}/one", names[:1], token, 16, args.seconds)
            serve.delete("one")
            print(f"{MODELS}-model endpoint, {CACHE} versions kept per replica ...", flush=True)
            t0 = time.perf_counter()
            serve.run(build_app(config, [f"{n}@champion" for n in names]), name="multi", route_prefix="/multi")
            started = time.perf_counter() - t0
            hot = names[:CACHE]
            results["hit"] = sequential(f"{base}/multi", hot, token, args.requests)
            results["hit, 16 clients"] = concurrent(f"{base}/multi", hot, token, 16, args.seconds)
            results["miss"] = sequential(f"{base}/multi", names, token, max(100, args.requests // 4))
            loaded = serve.get_app_handle("multi").served.remote().result(timeout_s=30)["loaded"]
            assert len(loaded) <= CACHE, loaded
        finally:
            serve.shutdown()
            p.close()
    finally:
        ray.shutdown()

    one = results["one model"]
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}, "
          f"Ray {ray.__version__}; date: {time.strftime('%Y-%m-%d')}; {MODELS} models, "
          f"serve.max_models_per_replica {CACHE}; the {MODELS}-model app up in {started:.1f} s")
    print()
    print("| endpoint, requests | p50 ms | p99 ms | mean ms | p50 vs one model |")
    print("|---|---|---|---|---|")
    for key in ("one model", "hit", "miss"):
        r = results[key]
        print(f"| {key} (1 client, {r['n']} requests) | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} | "
              f"{r['p50_ms'] / one['p50_ms']:.2f}x |")
    print()
    print("| endpoint, 16 clients | req/s | p50 ms | p99 ms | throughput vs one model |")
    print("|---|---|---|---|---|")
    for key in ("one model, 16 clients", "hit, 16 clients"):
        r = results[key]
        print(f"| {key} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['rps'] / results['one model, 16 clients']['rps']:.2f}x |"
              + (f" non-200: {r['errors']}" if r.get("errors") else ""))


if __name__ == "__main__":
    main()
