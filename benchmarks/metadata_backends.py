"""The metadata DB on SQLite and on Postgres, in one run: the same operations on each, and the ratio Postgres/SQLite.

1. registry get("regbench@champion"), in-process (ModelRegistry over the DB) and through the `registry` actor;
2. register of a small model dir (2 files, 64 KiB), in-process and through the actor;
3. online feature lookups (get_online_features, 1 and 100 entities), in-process and through the
   `feature_store` actor; and pushing the entities (the write the lookups depend on);
4. the serving path: POST /predict/bench at 1 and 16 clients, one app per backend on one Ray Serve
   (HAProxy, champion answered in the router: the defaults); and the router's token check with its
   cache (what a request pays) and with a refresh on every call (the query it runs every 5 s).

Both backends run in the same process and the same Ray cluster (one namespace each), and every
measurement alternates between them in rounds, so noise from other processes on the machine lands on
both alike. Postgres is a real server the script starts itself on loopback (tests/pg_server.py:
Debian's binaries, a temp data dir, fsync on); SQLite is the embedded default (WAL, synchronous=FULL).
Both commit durably.

Targets: registry get p99 at most 5 ms on Postgres (through the actor, as a router calls it); register
through the actor on Postgres at most 1.5x its SQLite time (mean).

    flock /tmp/aiinfra-ray.lock .venv/bin/python benchmarks/metadata_backends.py [--gets 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ray
import serving
from _timing import percentiles, timed

# The Postgres server the tests use; a benchmark needs nothing the project does not start itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_server import PostgresServer  # noqa: E402

from aiinfra.cluster_access import clear_stale_cluster_pointer  # noqa: E402
from aiinfra.config import PlatformConfig, load_config  # noqa: E402
from aiinfra.identity.tokens import TokenStore  # noqa: E402
from aiinfra.platform import Platform, connect, open_local  # noqa: E402
from aiinfra.storage import open_metadata_db  # noqa: E402

BACKENDS = ("sqlite", "postgresql")
MODEL = "regbench"
VIEW = "usage"
TARGET_GET_P99_MS, TARGET_REGISTER_RATIO = 5.0, 1.5


@ray.remote(num_cpus=0)
class Empty:
    def ping(self) -> None:
        return None


def backend_config(backend: str, home: Path, url: str, port: int) -> PlatformConfig:
    """The platform on ``url``, as serving.py configures it (its port, drift sampling off), one namespace each."""
    base = load_config(environ={}, home=str(home), metadata_url=url, namespace=f"bench-{backend}")
    return base.model_copy(update={"serve": base.serve.model_copy(update={"port": port, "champion_in_router": True}),
                                   "monitoring": base.monitoring.model_copy(update={"enabled": False})})


def small_model_dir(home: Path) -> Path:
    model_dir = home / "regbench-model"
    model_dir.mkdir(parents=True)
    (model_dir / "weights.safetensors").write_bytes(os.urandom(64 * 1024))
    (model_dir / "model.json").write_text('{"family": "tabular_mlp"}')
    return model_dir


def entity_rows(n: int) -> list[dict]:
    return [{"customer_id": i, "ts": "2026-01-01", **{f"f{j}": float(i + j) for j in range(10)}} for i in range(n)]


class Rounds:
    """Samples per (operation, backend), taken in alternating rounds so drifting load hits both backends."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.samples: dict[str, dict[str, list[float]]] = {}

    def measure(self, name: str, ops: dict[str, Callable[[], object]], n: int) -> None:
        print(f"  {name} ({n} per backend, {self.rounds} rounds) ...", flush=True)
        per_round = max(1, n // self.rounds)
        for fn in ops.values():
            timed(fn, min(50, per_round))  # warm-up: pools filled, statements cached
        slot = self.samples.setdefault(name, {b: [] for b in ops})
        for _ in range(self.rounds):
            for backend, fn in ops.items():
                slot[backend] += timed(fn, per_round)


def serving_token_and_model(platforms: dict[str, Platform], home: dict[str, Path]) -> dict[str, str]:
    """serving.py's model, registered as bench@champion in each backend, and a predict token in each."""
    tokens = {"sqlite": serving.prepare(home["sqlite"])}  # fits and registers in home's SQLite: our sqlite backend
    src = platforms["sqlite"].registry.get(serving.REF)
    model_dir = platforms["sqlite"].registry.download(src, home["postgresql"] / "serving-model")
    reg = platforms["postgresql"].registry
    v = reg.register(serving.MODEL, model_dir, metrics=src.metrics, signature=src.signature)
    reg.set_alias(serving.MODEL, v.version, "champion")
    db = open_metadata_db(platforms["postgresql"].config.metadata_url)
    try:
        tokens["postgresql"] = TokenStore(db).create("predict", who="benchmark")
    finally:
        db.close()
    return tokens


def in_process(rounds: Rounds, local: dict[str, Platform], model_dir: Path, args: argparse.Namespace) -> None:
    """Registry, feature and token operations on each DB in this process (no Ray)."""
    rng = random.Random(0)
    rounds.measure('get("regbench@champion") in-process',
                   {b: (lambda p=p: p.registry.get(f"{MODEL}@champion")) for b, p in local.items()}, args.gets)
    rounds.measure("register in-process",
                   {b: (lambda p=p: p.registry.register(MODEL, model_dir)) for b, p in local.items()}, args.registers)
    push_rows = entity_rows(args.entities)
    for p in local.values():
        p.features.register_view({"name": VIEW, "entity": "customer_id", "timestamp": "ts",
                                  "features": [f"f{i}" for i in range(10)], "source": "usage"})
    # One push of all the entities per backend, timed once: a transaction of `entities` upserts.
    for b, p in local.items():
        t0 = time.perf_counter()
        p.features.push(VIEW, push_rows)
        rounds.samples.setdefault(f"push {args.entities:,} entities in-process (one transaction)", {})[b] = [time.perf_counter() - t0]
    rounds.measure("1 entity in-process",
                   {b: (lambda p=p: p.features.get_online_features(VIEW, [rng.randrange(args.entities)]))
                    for b, p in local.items()}, args.lookups)
    rounds.measure("100 entities in-process",
                   {b: (lambda p=p: p.features.get_online_features(VIEW, rng.sample(range(args.entities), 100)))
                    for b, p in local.items()}, args.lookups // 3)

    # The router's token check: as a request pays it (cached), and with the refresh query on every call.
    stores, header = {}, {}
    for b, p in local.items():
        db = open_metadata_db(p.config.metadata_url)
        p._closers.append(db.close)
        stores[b] = (TokenStore(db), TokenStore(db, refresh_s=0.0))
        header[b] = f"Bearer {stores[b][0].create('predict', who='benchmark')}"
    rounds.measure("token check, cached (per request)",
                   {b: (lambda b=b: stores[b][0].verify(header[b])) for b in local}, args.gets)
    rounds.measure("token check with the refresh query (every 5 s)",
                   {b: (lambda b=b: stores[b][1].verify(header[b])) for b in local}, args.gets)


def through_actors(rounds: Rounds, remote: dict[str, Platform], model_dir: Path, args: argparse.Namespace) -> None:
    rng = random.Random(1)
    empty = Empty.remote()
    ray.get(empty.ping.remote())
    rounds.measure("empty actor call (Ray floor)", {b: (lambda: ray.get(empty.ping.remote())) for b in remote}, args.gets)
    rounds.measure('get("regbench@champion") via actor',
                   {b: (lambda p=p: p.registry.get(f"{MODEL}@champion")) for b, p in remote.items()}, args.gets)
    rounds.measure("register via actor",
                   {b: (lambda p=p: p.registry.register(MODEL, model_dir)) for b, p in remote.items()}, args.registers)
    rounds.measure("1 entity via actor",
                   {b: (lambda p=p: p.features.get_online_features(VIEW, [rng.randrange(args.entities)]))
                    for b, p in remote.items()}, args.lookups)
    rounds.measure("100 entities via actor",
                   {b: (lambda p=p: p.features.get_online_features(VIEW, rng.sample(range(args.entities), 100)))
                    for b, p in remote.items()}, args.lookups // 3)


def serve_both(remote: dict[str, Platform], tokens: dict[str, str], args: argparse.Namespace) -> dict[str, dict[int, list[dict]]]:
    """Both backends' apps on one Serve, measured alternately: {backend: {clients: [one dict per round]}}."""
    from ray import serve

    from aiinfra.serving.app import build_app

    port = remote["sqlite"].config.serve.port
    serve.start(http_options={"host": "127.0.0.1", "port": port,
                              "request_timeout_s": remote["sqlite"].config.serve.request_timeout_s})
    out: dict[str, dict[int, list[dict]]] = {b: {c: [] for c in serving.CONCURRENCY} for b in remote}
    t0 = time.perf_counter()
    for b, p in remote.items():
        serve.run(build_app(p.config, serving.REF), name=f"aiinfra-{b}", route_prefix=f"/{b}")
    print(f"  both apps up in {time.perf_counter() - t0:.1f} s on port {port}", flush=True)
    for _ in range(args.serve_rounds):
        for b in remote:
            url = f"http://127.0.0.1:{port}/{b}/predict/{serving.MODEL}"
            for clients, r in serving.measure(f"serving on {b}", url, tokens[b], args.serve_seconds).items():
                out[b][clients].append(r)
    return out


# -- the report ------------------------------------------------------------------------------------------

def _stats(samples: list[float]) -> dict[str, float]:
    return percentiles(samples)


def report(rounds: Rounds, served: dict[str, dict[int, list[dict]]] | None, args: argparse.Namespace, load: list[float]) -> None:
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}; "
          f"date: {time.strftime('%Y-%m-%d')}; 1-minute load average {min(load):.2f} to {max(load):.2f} during the run")
    print()
    print("| operation | n per backend | SQLite p50 ms | SQLite p99 ms | SQLite mean ms | Postgres p50 ms | Postgres p99 ms "
          "| Postgres mean ms | Postgres/SQLite p50 | Postgres/SQLite mean |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    stats = {name: {b: _stats(s) for b, s in per.items()} for name, per in rounds.samples.items()}
    for name, per in stats.items():
        s, p = per["sqlite"], per["postgresql"]
        print(f"| {name} | {s['n']} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['mean_ms']:.3f} | {p['p50_ms']:.3f} "
              f"| {p['p99_ms']:.3f} | {p['mean_ms']:.3f} | {p['p50_ms'] / s['p50_ms']:.2f} | {p['mean_ms'] / s['mean_ms']:.2f} |")
    if served:
        print()
        print("| serving (POST /predict/bench) | clients | SQLite req/s | SQLite p50 ms | SQLite p99 ms | Postgres req/s "
              "| Postgres p50 ms | Postgres p99 ms | Postgres/SQLite req/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for clients in serving.CONCURRENCY:
            row = []
            for b in BACKENDS:
                runs = served[b][clients]
                # Over the rounds (equal durations): mean req/s and p50, and the worst round's p99.
                rps = sum(r["rps"] for r in runs) / len(runs)
                p50 = sum(r["p50_ms"] for r in runs) / len(runs)
                p99 = max(r["p99_ms"] for r in runs)
                errors = sum(sum(r["errors"].values()) for r in runs)
                row.append((rps, p50, p99, errors))
            (srps, sp50, sp99, serr), (prps, pp50, pp99, perr) = row
            note = f" ({serr} / {perr} non-200)" if serr or perr else ""
            print(f"| Ray Serve, HAProxy, champion in the router{note} | {clients} | {srps:,.0f} | {sp50:.2f} | {sp99:.2f} "
                  f"| {prps:,.0f} | {pp50:.2f} | {pp99:.2f} | {prps / srps:.2f} |")
    print()
    get_pg = stats['get("regbench@champion") via actor']["postgresql"]
    get_local = stats['get("regbench@champion") in-process']["postgresql"]
    reg = stats["register via actor"]
    ratio = reg["postgresql"]["mean_ms"] / reg["sqlite"]["mean_ms"]
    print(f"- registry get p99 on Postgres at most {TARGET_GET_P99_MS:.0f} ms: through the actor "
          f"{'met' if get_pg['p99_ms'] <= TARGET_GET_P99_MS else 'MISSED'} ({get_pg['p99_ms']:.2f} ms); "
          f"in-process {get_local['p99_ms']:.2f} ms")
    print(f"- register through the actor, Postgres/SQLite mean at most {TARGET_REGISTER_RATIO}: "
          f"{'met' if ratio <= TARGET_REGISTER_RATIO else 'MISSED'} ({ratio:.2f}; p99 ratio "
          f"{reg['postgresql']['p99_ms'] / reg['sqlite']['p99_ms']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gets", type=int, default=1500, help="calls per backend for gets and token checks")
    parser.add_argument("--registers", type=int, default=150)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--lookups", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3, help="alternations between the backends per operation")
    parser.add_argument("--serve-seconds", type=float, default=3.0, help="measured seconds per serving point")
    parser.add_argument("--serve-rounds", type=int, default=2)
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="aiinfra-bench-backends-"))
    home = {b: base / b for b in BACKENDS}
    load = [os.getloadavg()[0]]
    print(f"state in {base}; starting Postgres ...", flush=True)
    with PostgresServer() as pg:
        port = serving._free_port()
        urls = {"sqlite": f"sqlite:///{home['sqlite'] / 'metadata.db'}", "postgresql": pg.url}
        configs = {b: backend_config(b, home[b], urls[b], port) for b in BACKENDS}
        model_dir = small_model_dir(base)
        rounds = Rounds(args.rounds)

        local = {b: open_local(c) for b, c in configs.items()}
        try:
            for p in local.values():
                v = p.registry.register(MODEL, model_dir, metrics={"auc": 0.9})
                p.registry.set_alias(MODEL, v.version, "champion")
            print("in-process (no Ray):", flush=True)
            in_process(rounds, local, model_dir, args)
            load.append(os.getloadavg()[0])
            tokens = None if args.skip_serving else serving_token_and_model(local, home)
        finally:
            for p in local.values():
                p.close()

        print("starting Ray (one local cluster, a namespace per backend) ...", flush=True)
        # A local cluster of our own, never one `aiinfra up` left running; HAProxy, as connect() sets it
        # for the local cluster it starts (the default, serve.haproxy), must be in the environment first.
        clear_stale_cluster_pointer()
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote: dict[str, Platform] = {}
        try:
            for b in BACKENDS:
                remote[b] = connect(configs[b])
            print("through the actors:", flush=True)
            through_actors(rounds, remote, model_dir, args)
            load.append(os.getloadavg()[0])
            served = None
            if tokens is not None:
                print("serving:", flush=True)
                served = serve_both(remote, tokens, args)
                load.append(os.getloadavg()[0])
        finally:
            for p in remote.values():
                p.close()
            ray.shutdown()  # ends the local cluster, Serve with it (serve.shutdown() alone waits 30 s here)
    report(rounds, served, args, load)


if __name__ == "__main__":
    main()
