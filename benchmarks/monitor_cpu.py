"""The drift monitor's CPU as a share of serving CPU under load (target: at most 5%), and its intake
through the router: sampled rows per second and feedback labels per second.

A real platform on a local Ray: the churn model trained (1 worker, 2 epochs), served by Ray Serve with
every request sampled to its monitor (``monitoring.sample_rate`` 1.0, windows of 1,000 rows), then
``--clients`` concurrent HTTP clients for ``--seconds`` seconds sending ``--rows`` rows per request.
CPU seconds are read with psutil from the processes themselves: the monitor actor against the Serve
replicas plus the HTTP proxy. The monitor tests every closed window (the default scipy detectors), so its share
grows with rows per second, not requests per second: both are printed. With ``--feedback`` (the
default) every client also posts each answer's true labels to ``/feedback`` right after the answer, as
a labelling service would: the labels reach the monitor through the router's group commit, most of
them before their sampled predictions do (held, then joined).

    .venv/bin/python benchmarks/monitor_cpu.py [--seconds 20] [--clients 16] [--rows 10] [--no-feedback]
        [--label-batch 20] [--label-every 8] [--min-window-seconds 5]
"""

from __future__ import annotations

import argparse
import os
import platform as pyplatform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rows", type=int, default=10, help="rows per request")
    parser.add_argument("--feedback", action=argparse.BooleanOptionalAction, default=True,
                        help="post each answer's labels to /feedback")
    parser.add_argument("--label-batch", type=int, default=1,
                        help="requests whose labels go in one /feedback call (items), as a labelling service batches")
    parser.add_argument("--label-every", type=int, default=1,
                        help="label one request in this many (labels arrive for only some of the traffic)")
    parser.add_argument("--min-window-seconds", type=float, default=0.0,
                        help="monitoring.min_window_seconds: at most one check per this many seconds (0: one per 1,000 rows)")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="aiinfra-bench-monitor-")
    os.environ["AIINFRA_HOME"] = home
    from aiinfra.config import load_config

    config = load_config(environ={"AIINFRA_SERVE_PORT": "8731"}, home=home)
    config = config.model_copy(update={"monitoring": config.monitoring.model_copy(update={
        "sample_rate": 1.0, "min_window_seconds": args.min_window_seconds})})
    from aiinfra.platform import connect

    platform = connect(config)
    import httpx
    import ray
    from ray import serve
    from ray.util.state import list_actors

    from aiinfra.data.spec import load_spec
    from aiinfra.data.synthetic import CATEGORICAL, NUMERIC, make_customers
    from aiinfra.data.transforms import load_feature_spec
    from aiinfra.demo.configs import example_config
    from aiinfra.identity.tokens import read_token_file
    from aiinfra.monitoring.actor import get_monitor_actor
    from aiinfra.pipelines.ingest import ingest
    from aiinfra.pipelines.train import run_training
    from aiinfra.serving.app import build_app
    from aiinfra.training.config import load_train_config

    try:
        print("[1/4] ingest and train the churn model ...", flush=True)
        data = make_customers(4000)
        path = Path(home) / "customers.csv"
        data.to_csv(path, index=False)
        ingest(config, "customers", str(path), spec=load_spec(example_config("customers_spec.yaml")))
        features = load_feature_spec(example_config("customers_features.yaml"))
        cfg = load_train_config({
            "name": "churn", "task": "binary",
            "data": {"dataset": "customers", "label": "churned", "features": features},
            "model": {"family": "tabular_mlp", "params": {"hidden": [32, 16]}},
            "trainer": {"num_workers": 1, "epochs": 2, "batch_size": 256},
            "gate": {"metric": "roc_auc"},
        })
        run_training(platform, cfg)
        print("[2/4] serve it with every request sampled to its monitor ...", flush=True)
        serve.start(http_options={"host": "127.0.0.1", "port": 8731})
        serve.run(build_app(config, "churn@champion"), name="aiinfra", route_prefix="/")
        base = "http://127.0.0.1:8731"
        auth = {"Authorization": f"Bearer {read_token_file(config.token_file)}"}
        rows = data[NUMERIC + CATEGORICAL].head(2000)
        instances = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")]
        truth = [int(v) for v in data["churned"].head(2000)]
        first = httpx.post(f"{base}/predict/churn", json={"instances": instances[:1]}, headers=auth)
        assert first.status_code == 200, (first.status_code, first.text[:500])
        monitor = get_monitor_actor(config, "churn")
        monitor_pid = ray.get(monitor.pid.remote())
        time.sleep(3.0)  # the monitor's first shipment and its imports are start-up costs, not load

        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        serving = [a.pid for a in actors if a.class_name.startswith("ServeReplica") or a.class_name == "ProxyActor"]
        print(f"[3/4] {args.clients} clients x {args.seconds:.0f}s, {args.rows} rows per request "
              f"(monitor pid {monitor_pid}; serving pids {serving}) ...", flush=True)
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0, "labels": 0, "feedback_failed": 0}
        lock = threading.Lock()

        def client(i: int) -> None:
            j = i * 97
            waiting: list[dict] = []  # labels not yet posted (--label-batch)
            sent = i  # requests sent (from i: the clients label different turns)

            def post(items: list[dict]) -> None:
                body = items[0] if len(items) == 1 else {"items": items}
                f = http.post(f"{base}/feedback/churn", headers=auth, json=body)
                with lock:
                    counts["labels" if f.status_code == 200 else "feedback_failed"] += (
                        args.rows * len(items) if f.status_code == 200 else 1)

            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    picked = [(j + k) % len(instances) for k in range(args.rows)]
                    r = http.post(f"{base}/predict/churn", json={"instances": [instances[p] for p in picked]},
                                  headers=auth)
                    with lock:
                        counts["ok" if r.status_code == 200 else "failed"] += 1
                    sent += 1
                    if args.feedback and r.status_code == 200 and sent % args.label_every == 0:
                        waiting.append({"request_id": r.json()["request_id"], "labels": [truth[p] for p in picked]})
                        if len(waiting) >= args.label_batch:
                            post(waiting)
                            waiting = []
                    j += args.rows
                if waiting:
                    post(waiting)

        # What the monitor actor costs doing nothing (Ray's worker loop, its ticker), over 5 s before the load.
        idle_0 = _cpu([monitor_pid])
        time.sleep(5.0)
        idle_rate = (_cpu([monitor_pid]) - idle_0) / 5.0
        before_m, before_s = _cpu([monitor_pid]), _cpu(serving)
        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        wall = time.perf_counter() - start
        time.sleep(2.0)  # the last shipments reach the monitor
        monitor_cpu, serving_cpu = _cpu([monitor_pid]) - before_m, _cpu(serving) - before_s
        status = ray.get(monitor.status.remote(5))
        share = monitor_cpu / serving_cpu if serving_cpu else float("nan")
        print("[4/4] results", flush=True)
        print(f"\nmonitoring.min_window_seconds {args.min_window_seconds:g}; {args.rows} rows per request; "
              f"labels of {args.label_batch} requests per /feedback call, one request in {args.label_every} labelled")
        print(f"machine: {os.cpu_count()} cores, {pyplatform.platform()}; {time.strftime('%Y-%m-%d')}")
        print(f"requests: {counts['ok']:,} ok, {counts['failed']:,} failed in {wall:.1f}s "
              f"({counts['ok'] / wall:,.0f} req/s, {counts['ok'] * args.rows / wall:,.0f} rows/s)")
        perf = status["performance"]["counts"]
        joined = perf["matched"] + perf["matched_late"]
        print(f"monitor: {status['stats']['rows_seen']:,} rows received ({status['stats']['rows_seen'] / wall:,.0f}/s), "
              f"{status['stats']['windows_closed']} windows closed "
              f"({status['stats']['rows_sampled_out']:,} rows outside the windows' samples)")
        if args.feedback:
            print(f"feedback: {counts['labels']:,} labels posted ({counts['labels'] / wall:,.0f}/s, "
                  f"{counts['feedback_failed']} calls failed); the monitor joined {joined:,} requests "
                  f"({perf['matched_late']:,} of them after holding the label for its prediction)")
        print("\n| process group | CPU seconds | share of serving |")
        print("| --- | ---: | ---: |")
        print(f"| Serve replicas + HTTP proxy | {serving_cpu:.2f} | 1.00 |")
        print(f"| drift monitor actor | {monitor_cpu:.2f} | {share:.3f} |")
        print(f"| of which idle (the actor's own {idle_rate:.3f} CPU s/s before the load) | {idle_rate * wall:.2f} | "
              f"{idle_rate * wall / serving_cpu:.3f} |")
        print(f"\ntarget: monitor <= 0.05 of serving CPU: {'met' if share <= 0.05 else 'NOT met'} ({share:.1%})")
    finally:
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001
            pass
        platform.close()


if __name__ == "__main__":
    main()
