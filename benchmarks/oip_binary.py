"""OIP v2 over REST: binary tensors (Triton's binary_data extension) against JSON tensors, same requests.

One Ray Serve app (``build_app``, the default path: the champion answered in the router) serving the
churn demo's MLP, fitted in-process and registered as in ``benchmarks/serving.py``. Each request carries
``--rows`` rows (five input tensors, 1,000 values each by default) to ``/v2/models/bench/infer``: once as
JSON tensors and JSON outputs, once as binary tensors with binary outputs, the bodies built beforehand
by tritonclient's own encoders (``InferInput.set_data_from_numpy``); 1 and 16 concurrent aiohttp
clients, ``--seconds`` each. Drift sampling is off, as in the serving benchmark.

Target (issue 17): binary at least 2x JSON's throughput for a 1,000-value input.

    .venv/bin/python benchmarks/oip_binary.py [--rows 1000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving import MODEL, _config, _free_port, _load, prepare  # noqa: E402

TARGET = 2.0


def bodies(rows: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The same request as JSON tensors and as binary tensors: (body, extra headers)."""
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.http._utils import _get_inference_request

    rng = np.random.default_rng(0)
    columns = {"tenure_months": ("FP64", rng.uniform(0, 72, rows)),
               "monthly_charges": ("FP64", rng.uniform(20, 150, rows)),
               "support_calls": ("INT64", rng.integers(0, 8, rows)),
               "plan": ("BYTES", rng.choice(np.array([b"basic", b"premium"], dtype=object), rows)),
               "region": ("BYTES", rng.choice(np.array([b"north", b"south", b"east", b"west"], dtype=object), rows))}
    out = {}
    for kind, binary in (("json", False), ("binary", True)):
        inputs = []
        for name, (datatype, values) in columns.items():
            tensor = triton.InferInput(name, [rows], datatype)
            tensor.set_data_from_numpy(values, binary_data=binary)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probability", "label")]
        body, json_size = _get_inference_request(inputs=inputs, request_id="", outputs=outputs, sequence_id=0,
                                                 sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                                 custom_parameters=None)
        out[kind] = (body if isinstance(body, bytes) else body.encode(),
                     {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    import httpx

    home = Path(tempfile.mkdtemp(prefix="aiinfra-bench-oip-"))
    print("[1/3] fit and register the model ...", flush=True)
    token = prepare(home)
    port = _free_port()
    config = _config(str(home), port)
    from aiinfra.platform import connect

    platform_ = connect(config)
    from ray import serve

    from aiinfra.serving.app import build_app

    try:
        print("[2/3] serve it ...", flush=True)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config, f"{MODEL}@champion"), name="aiinfra", route_prefix="/")
        url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
        auth = {"Authorization": f"Bearer {token}"}
        requests = bodies(args.rows)
        answers = {}
        for kind, (body, extra) in requests.items():
            r = httpx.post(url, content=body, headers={**auth, **extra}, timeout=60)
            assert r.status_code == 200, (kind, r.text[:300])
            answers[kind] = r
        results: dict[tuple[str, int], dict] = {}
        print(f"[3/3] {args.rows} rows a request; JSON body {len(requests['json'][0]):,} bytes, binary "
              f"{len(requests['binary'][0]):,} bytes; answers {len(answers['json'].content):,} and "
              f"{len(answers['binary'].content):,} bytes", flush=True)
        for clients in (1, 16):
            for kind, (body, extra) in requests.items():
                results[kind, clients] = asyncio.run(_load(url, token, clients, args.seconds, 1.0, body=body,
                                                           extra_headers=extra))
                r = results[kind, clients]
                print(f"  {kind}, {clients} client(s): {r['rps']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms, failed: {r['errors'] or 0}", flush=True)
    finally:
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001
            pass
        platform_.close()

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; {args.rows} rows a request")
    print("\n| clients | JSON req/s | binary req/s | ratio | JSON p50 ms | binary p50 ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients in (1, 16):
        j, b = results["json", clients], results["binary", clients]
        print(f"| {clients} | {j['rps']:.1f} | {b['rps']:.1f} | {b['rps'] / j['rps']:.2f} | {j['p50_ms']:.1f} | {b['p50_ms']:.1f} |")
    ratio = results["binary", 16]["rps"] / results["json", 16]["rps"]
    print(f"\ntarget: binary >= {TARGET}x JSON at 16 clients: {'met' if ratio >= TARGET else 'NOT met'} ({ratio:.2f}x)")
    print(json.dumps({f"{k}@{c}": round(v["rps"], 1) for (k, c), v in results.items()}))


if __name__ == "__main__":
    main()
