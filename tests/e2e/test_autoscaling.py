"""Autoscaling proven with Ray's own autoscaler, on one machine (clusters/fake_multinode.yaml).

A head with no CPUs; a DDP training run that needs 2 CPUs makes the autoscaler add worker nodes; a
worker node killed mid-run (a spot interruption) costs the run only the epochs since its last
checkpoint, on a replacement node; once idle, the worker nodes are removed. The test stops exactly
the cluster it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(900)

# Enough epochs that the run is still going when its first checkpoint appears and a node is killed, and after
# a replacement node joins (an epoch of 4,000 rows at batch 64 and its checkpoint take about a second here).
EPOCHS = 20

WORKLOAD = """
import json, os, sys
import ray
from aiinfra.data.synthetic import LABEL, make_customers
from aiinfra.data.transforms import fit_features, load_feature_spec
from aiinfra.demo.configs import example_config
from aiinfra.training.config import TrainConfig
from aiinfra.training.ray_train import PreparedData, fit

EPOCHS = int(sys.argv[3])
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
df = make_customers(4000, seed=3)
features = load_feature_spec(example_config("customers_features.yaml"))
pre = fit_features(df, features)
cfg = TrainConfig.model_validate({
    "name": "autoscale", "data": {"dataset": "x", "label": LABEL, "features": features},
    "model": {"family": "tabular_mlp", "params": {"hidden": [16]}},
    "trainer": {"num_workers": 2, "cpus_per_worker": 1, "epochs": EPOCHS, "batch_size": 64, "patience": None,
                "max_failures": 3},
})
data = PreparedData(train=df, val=df.iloc[:0], pre=pre, label=LABEL, task="binary", class_labels=[0, 1])
result = fit(cfg, data, storage_root=sys.argv[1], run_name=sys.argv[2])
print("HISTORY " + json.dumps(result.history), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_nodes(env: dict, address: str) -> int:
    out = subprocess.run([str(BIN / "ray"), "status", "--address", address], env=env, capture_output=True,
                         text=True, timeout=60).stdout
    active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(int(n) for n in re.findall(r"^\s*(\d+) ray\.worker\.cpu", active, flags=re.M))


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    import ray._private.services

    tmp = tmp_path_factory.mktemp("fake-cluster")
    port = _free_port()
    ip = ray._private.services.get_node_ip_address()
    config = yaml.safe_load((ROOT / "clusters" / "fake_multinode.yaml").read_text())
    config["provider"]["gcs_address"] = f"{ip}:{port}"  # fake workers join this head, not one at 6379
    path = tmp / "fake.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "token" if (Path.home() / ".ray" / "auth_token").exists() else "disabled"}
    env.pop("RAY_ADDRESS", None)
    before = {p.pid for p in psutil.process_iter()}
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--num-cpus=0", f"--port={port}", f"--autoscaling-config={path}",
         f"--dashboard-port={_free_port()}", "--include-dashboard=true"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    address = f"{ip}:{port}"
    try:
        yield {"env": {**env, "RAY_ADDRESS": address}, "address": address, "tmp": tmp}
    finally:
        # Stop exactly this cluster: every process that appeared since it started and names its GCS port
        # (head, monitor, fake worker nodes) together with their children.
        ours = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid not in before and (f":{port}" in cmd or f"_port={port}" in cmd or "ray::" in cmd):
                ours.append(proc)
        for proc in list(ours):
            try:
                ours += proc.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for proc in ours:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(ours, timeout=30)
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if f"_port={port}" in " ".join(p.info["cmdline"] or [])]
        assert not left, f"processes of the fake cluster still running: {left}"
        # `ray start` named this cluster in Ray's "current cluster" pointer; a stale one breaks later clusters.
        from aiinfra.cluster_access import clear_stale_cluster_pointer

        clear_stale_cluster_pointer()
        pointer = Path("/tmp/ray/ray_current_cluster")
        assert not (pointer.exists() and pointer.read_text().strip().endswith(f":{port}"))


def test_training_scales_the_cluster_up_survives_a_lost_node_and_the_cluster_scales_back(fake_cluster):
    env, address, tmp = fake_cluster["env"], fake_cluster["address"], fake_cluster["tmp"]
    assert _worker_nodes(env, address) == 0  # the head alone, with no CPUs
    run = f"autoscale-{uuid.uuid4().hex[:8]}"
    storage = tmp / "storage"
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(storage), run, str(EPOCHS)], env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]

    peak, killed = 0, None
    run_dir = storage / "checkpoints" / run
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        peak = max(peak, _worker_nodes(env, address))
        if killed is None and run_dir.exists() and any(p.name.startswith("checkpoint_") for p in run_dir.iterdir()):
            # A spot interruption: the node of a training worker dies (its raylet, with everything on it).
            for p in psutil.process_iter(["cmdline"]):
                if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker"):
                    raylet = p.parent()
                    if raylet is not None and "raylet" in " ".join(raylet.cmdline()[:1]) and "--head" not in raylet.cmdline():
                        for victim in [raylet, *raylet.children(recursive=True)]:
                            try:
                                victim.kill()
                            except psutil.NoSuchProcess:
                                pass
                        killed = raylet.pid
                        break
        time.sleep(1)
    assert proc.wait(timeout=60) == 0, "".join(output[-60:])
    assert peak >= 2, f"the autoscaler never added the 2 one-CPU nodes the run needs (peak {peak})"
    assert killed is not None, "no worker node was killed"
    history = json.loads(next(line for line in output if line.startswith("HISTORY "))[len("HISTORY "):])
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    starts = sorted({h["start_epoch"] for h in history})
    assert len(starts) >= 2 and starts[-1] > 0, (starts, "".join(output[-40:]))  # resumed after losing the node

    deadline = time.monotonic() + 180
    while _worker_nodes(env, address) > 0:
        assert time.monotonic() < deadline, "idle worker nodes were not removed"
        time.sleep(3)
