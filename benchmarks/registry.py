"""Registry latency: get("name@champion") and register through the actor, from a driver.

Baselines in the same run: the same get on the registry class in-process (no Ray), and an
empty actor call (Ray's own floor). Target: p99 of get through the actor at most 5 ms.

    .venv/bin/python benchmarks/registry.py [--gets 3000] [--registers 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import ray
from _timing import percentiles, timed


@ray.remote(num_cpus=0)
class Empty:
    def ping(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gets", type=int, default=3000)
    parser.add_argument("--registers", type=int, default=300)
    args = parser.parse_args()

    from aiinfra.config import load_config
    from aiinfra.platform import connect, open_local

    home = Path(tempfile.mkdtemp(prefix="aiinfra-bench-"))
    config = load_config(environ={}, home=str(home))
    model_dir = home / "model"
    model_dir.mkdir()
    (model_dir / "weights.safetensors").write_bytes(os.urandom(64 * 1024))
    (model_dir / "model.json").write_text('{"family": "tabular_mlp"}')

    print(f"starting Ray; state in {home}", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        p = connect(config)
        reg = p.registry
        v = reg.register("bench", model_dir, metrics={"auc": 0.9})
        reg.set_alias("bench", v.version, "champion")
        timed(lambda: reg.get("bench@champion"), 200)  # warm-up

        empty = Empty.remote()
        ray.get(empty.ping.remote())
        results = {}
        print("timing empty actor calls ...", flush=True)
        results["empty actor call (Ray floor)"] = percentiles(timed(lambda: ray.get(empty.ping.remote()), args.gets))
        print("timing get through the actor ...", flush=True)
        results['get("bench@champion") via actor'] = percentiles(timed(lambda: reg.get("bench@champion"), args.gets))
        print("timing register through the actor ...", flush=True)
        results["register (2 files, 64 KiB) via actor"] = percentiles(timed(lambda: reg.register("bench", model_dir), args.registers))

        local = open_local(load_config(environ={}, home=str(home)))
        print("timing in-process baselines ...", flush=True)
        results['get("bench@champion") in-process (baseline)'] = percentiles(timed(lambda: local.registry.get("bench@champion"), args.gets))
        results["register in-process (baseline)"] = percentiles(timed(lambda: local.registry.register("bench", model_dir), args.registers))
    finally:
        ray.shutdown()

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}; "
          f"date: {time.strftime('%Y-%m-%d')}")
    print()
    print("| operation | n | p50 ms | p99 ms | mean ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['n']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} |")
    get_actor = results['get("bench@champion") via actor']
    get_local = results['get("bench@champion") in-process (baseline)']
    print()
    print(f"get p50 through the actor / in-process: {get_actor['p50_ms'] / get_local['p50_ms']:.1f}x; "
          f"p99 target 5 ms: {'met' if get_actor['p99_ms'] <= 5 else 'MISSED'} ({get_actor['p99_ms']:.2f} ms)")


if __name__ == "__main__":
    main()
