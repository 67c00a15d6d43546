"""Serving the same model as torch, as ONNX (fp32) and as ONNX int8: single-row latency and 16-client throughput
through the full HTTP path, in one run.

The model: an MLP ([256, 128], large enough for int8 weights to matter) on the churn demo's features, fitted
in-process on 5,000 `make_customers` rows and registered as `bench@1` (torch). `aiinfra models export --register`
makes `bench@2` (ONNX fp32, checked against @1 on its holdout rows) and `aiinfra optimize --quantize int8` makes
`bench@3` (gated on the same rows); both through their pipelines here, in-process.

For each version: `champion` points at it, and a child process starts Ray and the platform's Serve app (HAProxy
ingress, the default; champion answered in the router) and measures POST /predict/bench with 1 and 16 aiohttp
clients, one row per request: token check, JSON body, validation, the fitted transforms, the model, postprocessing.
Each child runs alone (never two Ray clusters at once). Also reported: the in-process single-row `predict()` of
each version (median of 300, interleaved), and the size of its weights file.

    .venv/bin/python benchmarks/onnx_serving.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serving  # benchmarks/serving.py: the load generator, config and the baseline model's set-up

MODEL, REF = serving.MODEL, serving.REF
VERSIONS = {1: "torch (safetensors)", 2: "ONNX fp32 (onnxruntime)", 3: "ONNX int8 (onnxruntime, dynamic quantization)"}


def prepare(home: Path) -> tuple[str, dict]:
    """bench@1 (torch), @2 (its ONNX export), @3 (int8); returns a predict token and the variants' own figures."""
    import numpy as np

    from aiinfra.data.synthetic import LABEL, make_customers
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.monitoring.profile import build_profile, write_profile
    from aiinfra.pipelines.progress import StageLog
    from aiinfra.pipelines.variants import export_version, optimize_version
    from aiinfra.platform import open_local
    from aiinfra.storage import open_metadata_db
    from aiinfra.training.model_dir import load_model_dir, save_model_dir
    from aiinfra.training.tabular import signature_for

    df = make_customers(6_000, seed=7)
    train, holdout = df.iloc[:5_000], df.iloc[5_000:]
    spec, model, pre, _ = serving.fit_churn_mlp(train, [256, 128], epochs=15, batch=250, lr=0.003)
    model_dir = save_model_dir(home / "model", spec, model.state_dict(), pre)
    _, trained, _ = load_model_dir(model_dir)
    sig = signature_for(pre)
    write_profile(build_profile(holdout, sig.inputs, task="binary", class_labels=[0, 1],
                                outputs=trained.scores(pre.transform(holdout)),
                                labels=holdout[LABEL].to_numpy(np.float64), source="the last 1,000 rows"), model_dir)
    config = serving._config(str(home), 8000)
    quiet = StageLog(total=4, out=open(os.devnull, "w"))  # noqa: SIM115 - the figures are printed below
    with open_local(config) as p:
        v = p.registry.register(MODEL, model_dir, signature=sig)
        exported = export_version(p, v.ref, register=True, log=quiet)
        quantized = optimize_version(p, exported.model, quantize="int8", log=quiet)
    db = open_metadata_db(config.metadata_url)
    try:
        token = TokenStore(db).create("predict", who="benchmark")
    finally:
        db.close()
    return token, {"export": exported.to_dict(), "int8": quantized.to_dict()}


def point_champion(home: str, version: int) -> None:
    from aiinfra.platform import open_local

    with open_local(serving._config(home, 8000)) as p:
        p.registry.set_alias(MODEL, version, "champion")


def run_serve(home: str, token: str, seconds: float) -> dict:
    import ray

    from aiinfra.cluster_access import clear_stale_cluster_pointer

    port = serving._free_port()
    config = serving._config(home, port)
    clear_stale_cluster_pointer()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=config.namespace)
    try:
        from ray import serve

        from aiinfra.platform import connect
        from aiinfra.serving.app import build_app

        p = connect(config)
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": config.serve.request_timeout_s})
        serve.run(build_app(config, REF), name="aiinfra", route_prefix="/")
        try:
            out = serving.measure("serve", f"http://127.0.0.1:{port}/predict/{MODEL}", token, seconds)
            return {str(c): r for c, r in out.items()}
        finally:
            serve.shutdown()
            p.close()
    finally:
        ray.shutdown()


def child(home: str, token: str, seconds: float, out: Path) -> dict | None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"  # the platform's default ingress; read when Ray starts
    cmd = [sys.executable, __file__, "--child", "--home", home, "--token", token, "--seconds", str(seconds), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, timeout=300)
    if proc.returncode != 0 or not out.exists():
        return None
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(run_serve(args.home, args.token, args.seconds)))
        return

    home = Path(tempfile.mkdtemp(prefix="aiinfra-bench-onnx-"))
    print(f"preparing bench@1 (torch), @2 (ONNX), @3 (int8) in {home} ...", flush=True)
    t0 = time.perf_counter()
    token, variants = prepare(home)
    print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    results: dict[int, dict | None] = {}
    for version, label in VERSIONS.items():
        point_champion(str(home), version)
        print(f"{label} (bench@{version}):", flush=True)
        results[version] = child(str(home), token, args.seconds, home / f"v{version}.json")

    ex, q = variants["export"], variants["int8"]
    in_process = {1: ex["parent_latency_ms"], 2: ex["variant_latency_ms"], 3: q["variant_latency_ms"]}
    size = {1: ex["parent_bytes"], 2: ex["variant_bytes"], 3: q["variant_bytes"]}
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"export: largest score difference {ex['max_abs_difference']:.2e} on {ex['rows']} rows; "
          f"int8: roc_auc {q['variant_metric']:.4f} vs {q['parent_metric']:.4f}\n")
    print("| version | weights bytes | in-process 1-row ms | HTTP 1 client p50 ms | p99 ms | req/s | 16 clients req/s | p50 ms | p99 ms | req/s vs torch (16) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = results.get(1)
    for version, label in VERSIONS.items():
        r = results[version]
        if r is None:
            print(f"| {label} | {size[version]:,} | {in_process[version]:.3f} | failed | | | | | | |")
            continue
        ratio = f"{r[16]['rps'] / base[16]['rps']:.2f}" if base else "-"
        print(f"| {label} | {size[version]:,} | {in_process[version]:.3f} | {r[1]['p50_ms']:.2f} | {r[1]['p99_ms']:.2f} | "
              f"{r[1]['rps']:,.0f} | {r[16]['rps']:,.0f} | {r[16]['p50_ms']:.2f} | {r[16]['p99_ms']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
