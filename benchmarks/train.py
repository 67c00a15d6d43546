"""Ray Train DDP against a plain torch.distributed DDP script, and Tune's overhead.

    .venv/bin/python benchmarks/train.py [--rows 50000] [--epochs 6] [--batch 256]

1. Per-epoch time of aiinfra's training loop on Ray Train (2 gloo workers; the full cycle of an
   epoch: data iteration, forward/backward with DDP's all-reduce, the per-epoch checkpoint and
   report) against a plain script: 2 processes, torch.distributed (gloo) and DDP, the same model,
   rows, batch size and thread count, data already in memory as tensors. Start-up is reported
   separately. Target: at most 1.10x the plain script.
2. Tune: the wall time of a 4-trial search (2 at a time) against the sum of the trials' own
   times divided by the concurrency. Target: at most 1.2x.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

HIDDEN = [64, 32]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_worker(rank: int, world: int, port: int, x: np.ndarray, y: np.ndarray, epochs: int, batch: int,
                  out: dict) -> None:
    """One process of the plain baseline: torch.distributed + DDP, nothing else."""
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from aiinfra.training.models import build_model

    t_start = time.perf_counter()
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model("tabular_mlp", x.shape[1], 1, {"hidden": HIDDEN}))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    xs, ys = torch.from_numpy(x[rank::world]), torch.from_numpy(y[rank::world])
    startup = time.perf_counter() - t_start
    times = []
    for epoch in range(epochs):
        dist.barrier()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(xs), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss_fn(model(xs[idx]).squeeze(-1), ys[idx]).backward()
            opt.step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out["epochs"] = times
        out["startup"] = startup
    dist.destroy_process_group()


def plain_ddp(x: np.ndarray, y: np.ndarray, epochs: int, batch: int) -> dict:
    import torch.multiprocessing as mp

    manager = mp.Manager()
    out = manager.dict()
    t0 = time.perf_counter()
    mp.spawn(_plain_worker, args=(2, _free_port(), x, y, epochs, batch, out), nprocs=2, join=True)
    wall = time.perf_counter() - t0
    return {"epochs": list(out["epochs"]), "wall": wall, "startup": wall - sum(out["epochs"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    import tempfile

    import ray

    from aiinfra.data.synthetic import LABEL, make_customers
    from aiinfra.data.transforms import fit_features, load_feature_spec
    from aiinfra.demo.configs import example_config
    from aiinfra.training.config import TrainConfig
    from aiinfra.training.ray_train import PreparedData, fit
    from aiinfra.training.search import search

    df = make_customers(args.rows, seed=0)
    features = load_feature_spec(example_config("customers_features.yaml"))
    pre = fit_features(df, features)
    x, y = pre.transform(df).astype(np.float32), df[LABEL].to_numpy(dtype=np.float32)
    print(f"{args.rows:,} rows x {x.shape[1]} inputs, MLP {HIDDEN}, batch {args.batch} per worker, {args.epochs} epochs, "
          "2 gloo workers", flush=True)

    print("plain torch.distributed DDP ...", flush=True)
    plain = plain_ddp(x, y, args.epochs, args.batch)

    print("Ray Train DDP (aiinfra's loop) ...", flush=True)
    root = tempfile.mkdtemp(prefix="aiinfra-bench-train-")
    ray.init(address="local", num_cpus=2, log_to_driver=False)  # the dashboard: Train V2 frees placement groups through it
    cfg = TrainConfig.model_validate({
        "name": "bench", "data": {"dataset": "bench", "label": LABEL, "features": features},
        "model": {"family": "tabular_mlp", "params": {"hidden": HIDDEN}},
        "trainer": {"num_workers": 2, "cpus_per_worker": 1.0, "epochs": args.epochs, "batch_size": args.batch,
                    "lr": 0.01, "patience": None, "seed": 0},
    })
    data = PreparedData(train=df, val=df.iloc[:0], pre=pre, label=LABEL, task="binary", class_labels=[0, 1])
    t0 = time.perf_counter()
    result = fit(cfg, data, storage_root=root, run_name=f"bench-{os.getpid()}")
    ray_wall = time.perf_counter() - t0
    starts = [h["epoch_started_at"] for h in result.history]
    cycles = [b - a for a, b in zip(starts, starts[1:])]  # full epoch cycles, checkpoint and report included
    compute = [h["epoch_time_s"] for h in result.history]

    # Epoch 0 carries one-off warm-up on both sides (thread pools, Ray Data's first split): compare the rest.
    plain_epoch = statistics.median(plain["epochs"][1:])
    ray_cycle = statistics.median(cycles[1:] if len(cycles) > 1 else cycles)
    ray_compute = statistics.median(compute[1:])

    print("Tune: 4 trials, 2 at a time, 3 epochs each ...", flush=True)
    tcfg = TrainConfig.model_validate({
        **cfg.model_dump(mode="json"),
        "trainer": {**cfg.trainer.model_dump(mode="json"), "epochs": 3, "cpus_per_worker": 0.5},
        "tune": {"search_space": {"trainer.lr": {"grid": [0.003, 0.01, 0.02, 0.05]}}, "num_samples": 1,
                 "max_concurrent_trials": 2, "scheduler": "fifo", "workers_per_trial": 1},
    })
    small = PreparedData(train=df.iloc[:10_000], val=df.iloc[10_000:12_000], pre=pre, label=LABEL, task="binary",
                         class_labels=[0, 1])
    found = search(tcfg, small, storage_root=root, run_name=f"bench-tune-{os.getpid()}")
    ideal = sum(t.wall_s for t in found.trials) / 2
    ray.shutdown()

    print()
    print(f"date {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, Ray {ray.__version__}")
    print("| loop | per-epoch s (median, epochs 2..n) | start-up s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| plain torch.distributed DDP (baseline) | {plain_epoch:.3f} | {plain['startup']:.1f} | 1.00 |")
    print(f"| Ray Train DDP, full cycle (with checkpoint + report) | {ray_cycle:.3f} | "
          f"{ray_wall - sum(cycles[1:]) - compute[-1]:.1f} | {ray_cycle / plain_epoch:.2f} |")
    print(f"| Ray Train DDP, train step only (epoch_time_s) | {ray_compute:.3f} | - | {ray_compute / plain_epoch:.2f} |")
    print()
    print(f"Tune: wall {found.wall_s:.1f}s; sum of trial times / concurrency {ideal:.1f}s; "
          f"ratio {found.wall_s / ideal:.2f} (target <= 1.2)")
    print(f"per trial (s): {', '.join(f'{t.wall_s:.1f}' for t in found.trials)}")


if __name__ == "__main__":
    main()
