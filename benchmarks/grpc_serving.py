"""OIP v2 over gRPC: Ray Serve's gRPC proxy against a plain grpcio server, and against REST JSON, in one run.

The churn demo's MLP, fitted in-process and registered as in ``benchmarks/serving.py``. One infer request of
one row (five input tensors, raw contents, as tritonclient sends them), built once:

- plain: a grpcio server in one process (``grpc.aio``) with the same ``GRPCInferenceService`` servicer shape:
  the same token check (TokenStore), decoding (``grpc_oip.infer_body`` + ``decode_infer_request``), Predictor
  and encoding (``infer_response``);
- Serve: the platform's app (``build_app``, champion answered in the router) behind Serve's gRPC proxy
  (``serve.grpc_port``), and the same request as REST OIP JSON through the HAProxy ingress, same run.

Load: ``grpc.aio`` stubs (one channel, 1 and 16 concurrent callers) for gRPC; aiohttp clients for REST.
Each configuration in its own child process, one after the other (never two Ray clusters at once).
Target (issue 17): the Serve gRPC path at least 0.6x the plain grpcio server's throughput at 16 clients.

    .venv/bin/python benchmarks/grpc_serving.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import phased_load  # noqa: E402
from serving import MODEL, REF, ROWS, _config, _free_port, _load, prepare  # noqa: E402

CONCURRENCY = (1, 16)
TARGET = 0.6
DATATYPES = {"tenure_months": "FP64", "monthly_charges": "FP64", "support_calls": "INT64", "plan": "BYTES",
             "region": "BYTES"}


def grpc_request() -> bytes:
    """One row as tritonclient builds a ModelInferRequest (raw_input_contents), serialized."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request

    inputs = []
    for name, datatype in DATATYPES.items():
        value = ROWS[0][name]
        array = np.array([value.encode() if isinstance(value, str) else value],
                         dtype=object if datatype == "BYTES" else (np.int64 if datatype == "INT64" else np.float64))
        t = grpcclient.InferInput(name, [1], datatype)
        t.set_data_from_numpy(array)
        inputs.append(t)
    request = _get_inference_request(model_name=MODEL, inputs=inputs, model_version="", request_id="", outputs=None,
                                     sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                     parameters=None)
    return request.SerializeToString()


async def _grpc_load(target: str, token: str, clients: int, seconds: float, metadata: tuple = ()) -> dict:
    import grpc

    from aiinfra.serving.grpc_oip import pb

    body = pb().ModelInferRequest.FromString(grpc_request())
    headers = (("authorization", f"Bearer {token}"), *metadata)
    async with grpc.aio.insecure_channel(target) as channel:
        from tritonclient.grpc import service_pb2_grpc

        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(body, metadata=headers, timeout=30)  # the server answers before the clock starts

        async def call() -> str | None:
            try:
                await stub.ModelInfer(body, metadata=headers, timeout=30)
                return None
            except grpc.aio.AioRpcError as e:
                return str(e.code())

        return await phased_load(call, clients, seconds, warmup_s=1.0)


def measure_grpc(label: str, target: str, token: str, seconds: float, metadata: tuple = ()) -> dict[int, dict]:
    out = {}
    for clients in CONCURRENCY:
        out[clients] = r = asyncio.run(_grpc_load(target, token, clients, seconds, metadata))
        print(f"  {label}: {clients} client(s): {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
              + (f", errors {r['errors']}" if r["errors"] else ""), flush=True)
    return out


def run_plain(home: str, token: str, seconds: float) -> dict:
    """A grpcio server in a child process: the same servicer work the platform's ingress does, no Serve."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--child", "plain-server", "--home", home, "--port", str(port)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                return {str(c): r for c, r in measure_grpc("plain grpcio", f"127.0.0.1:{port}", token, seconds).items()}
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def plain_server(home: str, port: int) -> None:
    import grpc
    import torch
    from tritonclient.grpc import service_pb2_grpc

    from aiinfra.errors import AiInfraError
    from aiinfra.identity.tokens import TokenStore
    from aiinfra.inference.predictor import Predictor
    from aiinfra.platform import open_local
    from aiinfra.serving.grpc_oip import grpc_code, infer_body, infer_response, pb
    from aiinfra.serving.oip import decode_infer_request, encode_infer_response
    from aiinfra.storage import open_metadata_db

    torch.set_num_threads(1)
    config = _config(home, 8000)
    p = open_local(config)
    version = p.registry.get(REF)
    predictor = Predictor(version, p.registry.download(version, tempfile.mkdtemp(prefix="aiinfra-plain-")))
    tokens = TokenStore(open_metadata_db(config.metadata_url))
    messages = pb()

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):  # noqa: N802
            try:
                tokens.verify(dict(context.invocation_metadata()).get("authorization")).require("predict")
                rows, request_id, wanted = decode_infer_request(infer_body(request), version.signature)
                predictions = predictor.predict(rows)
                return infer_response(encode_infer_response(predictions, version.signature, model=version.name,
                                                            version=version.version, request_id=request_id or "",
                                                            wanted=wanted))
            except AiInfraError as e:
                await context.abort(grpc_code(e), e.message)
                return messages.ModelInferResponse()

    async def serve_forever() -> None:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve_forever())


def run_serve(home: str, token: str, seconds: float) -> dict:
    import ray

    from aiinfra.cluster_access import clear_stale_cluster_pointer

    port, grpc_port = _free_port(), _free_port()
    config = _config(home, port)
    config = config.model_copy(update={"serve": config.serve.model_copy(update={"grpc_port": grpc_port})})
    clear_stale_cluster_pointer()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=config.namespace)
    try:
        from ray import serve

        from aiinfra.platform import connect
        from aiinfra.serving.app import build_app
        from aiinfra.serving.grpc_oip import start_options

        p = connect(config)
        serve.start(**start_options(config))
        serve.run(build_app(config, REF), name="aiinfra", route_prefix="/")
        try:
            grpc_out = measure_grpc("Serve gRPC proxy", f"127.0.0.1:{grpc_port}", token, seconds)
            body = {"inputs": [{"name": n, "datatype": d, "shape": [1], "data": [ROWS[0][n]]} for n, d in DATATYPES.items()]}
            rest = {}
            for clients in CONCURRENCY:
                rest[clients] = r = asyncio.run(_load(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", token, clients,
                                                      seconds, warmup_s=1.0, body=json.dumps(body).encode()))
                print(f"  Serve REST OIP JSON (HAProxy): {clients} client(s): {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms",
                      flush=True)
            return {**{f"grpc-{c}": r for c, r in grpc_out.items()}, **{f"rest-{c}": r for c, r in rest.items()}}
        finally:
            serve.shutdown()
            p.close()
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--child", choices=["plain-server", "serve"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "plain-server":
        return plain_server(args.home, args.port)
    if args.child == "serve":
        Path(args.out).write_text(json.dumps(run_serve(args.home, args.token, args.seconds)))
        return None

    home = Path(tempfile.mkdtemp(prefix="aiinfra-bench-grpc-"))
    token = prepare(home)
    plain = {int(k): v for k, v in run_plain(str(home), token, args.seconds).items()}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"  # the platform's default HTTP ingress; read when Ray starts
    out = home / "serve.json"
    subprocess.run([sys.executable, __file__, "--child", "serve", "--home", str(home), "--token", token,
                    "--seconds", str(args.seconds), "--out", str(out)], env=env, timeout=300, check=True)
    served = json.loads(out.read_text())
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| server | clients | req/s | p50 ms | p99 ms | req/s vs plain gRPC |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = [("plain grpcio server, 1 process (baseline)", plain)]
    rows.append(("Ray Serve gRPC proxy (OIP GRPCInferenceService)", {c: served[f"grpc-{c}"] for c in CONCURRENCY}))
    rows.append(("Ray Serve REST OIP JSON, HAProxy ingress", {c: served[f"rest-{c}"] for c in CONCURRENCY}))
    for name, figures in rows:
        for c in CONCURRENCY:
            r = figures[c]
            print(f"| {name} | {c} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps'] / plain[c]['rps']:.2f} |")
    ratio = served["grpc-16"]["rps"] / plain[16]["rps"]
    print(f"\nServe gRPC at 16 clients: {ratio:.2f}x plain (target at least {TARGET}x): {'met' if ratio >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
