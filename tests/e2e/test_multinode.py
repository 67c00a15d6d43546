"""The platform on a Ray cluster of two nodes that share no disk: all state in Postgres and object storage.

Two ``ray start`` nodes on this machine (a head and a worker), each with its own AIINFRA_HOME and working
directory, as two machines would have; what they share is a real Postgres (tests/pg_server.py) and a real
S3-compatible server (moto), both on loopback. Through the CLI and HTTP, as a user would: ingest from
s3://, train with one DDP worker on each node, register, serve with one router replica on each node,
answer authenticated predictions, move the champion alias and see both replicas follow it, SIGKILL the
registry actor and see it come back with every model; no node's disk gains a metadata DB. The same
cluster with the default node-local state (a SQLite file, a local storage root) is refused, saying what to
configure. The test stops exactly the processes it started, never ``ray stop``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from aiinfra.data.synthetic import make_customers

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
CONFIG = "tests/e2e/configs/churn_multinode.yaml"  # relative: `train --submit` uploads the directory it is run from
MODEL = "churn-mn"

pytestmark = pytest.mark.timeout(600)

# A client's view of the cluster, run as a driver of its own (RAY_ADDRESS): Ray's state API, JSON out.
STATE = """
import json, os, sys
import ray
from ray.util.state import list_actors
ray.init(address=os.environ["RAY_ADDRESS"], namespace="aiinfra", log_to_driver=False)
key, value = sys.argv[1].split("=", 1)
actors = [{"name": a.name, "class_name": a.class_name, "state": a.state, "node_id": a.node_id, "pid": a.pid}
          for a in list_actors(filters=[(key, "=", value)], limit=10_000, raise_on_missing_output=False)]
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print("STATE " + json.dumps({"actors": actors, "nodes": nodes}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(env: dict, *args: str, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def aiinfra(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return _run(env, str(BIN / "aiinfra"), *args, timeout=timeout)


def _state(env: dict, where: str) -> dict:
    """The cluster's alive nodes and the actors (any state) matching ``where`` (``class_name=...``, ``name=...``)."""
    done = _run(env, sys.executable, "-c", STATE, where, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("STATE "))[len("STATE "):])


def _no_metadata_db(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.rglob("metadata.db*")]


class TwoNodes:
    """A head and a worker node (``ray start``), each with its own AIINFRA_HOME, working directory and Ray temp
    dir (sessions, logs, runtime_env packages), as on two machines.

    ``node_env`` is what every process on the node sees (the raylet's environment, inherited by its
    workers, actors and job drivers): the shared-state settings a cloud launcher would give it.
    """

    def __init__(self, tmp: Path, shared: dict[str, str]) -> None:
        self.tmp = tmp
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.ip = "127.0.0.1"  # both nodes on loopback: nothing of this cluster is reachable from outside
        self.address = f"{self.ip}:{self.port}"
        self.dashboard = f"http://{self.ip}:{self.dashboard_port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIINFRA_", "AWS_"))}
        for key in ("RAY_ADDRESS", "RAY_SERVE_ENABLE_HA_PROXY"):
            # Serve's HAProxy ingress has fixed stats ports (9101, 8404): two nodes on one machine would
            # clash. Ray Serve's own proxies bind the HTTP port with SO_REUSEPORT, one per node.
            base.pop(key, None)
        # Ray's token auth exactly when ~/.ray/auth_token exists, as a cluster started by `ray start` here does.
        base["RAY_AUTH_MODE"] = "token" if (Path.home() / ".ray" / "auth_token").exists() else "disabled"
        # The platform's Python first on PATH, as on a node set up for it: a job's `python` entrypoint is this one.
        base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
        self.base_env = base
        self.shared = shared
        self.nodes: dict[str, dict] = {}
        # Short: Ray's Unix sockets live under it (at most 107 bytes a path). Per node: two nodes sharing one
        # would unpack a job's working_dir into the same directory, each deleting it under the other.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="aiinfra-mn-", dir="/tmp"))
        self._before = {p.pid for p in psutil.process_iter()}

    def _node(self, name: str) -> dict:
        home, cwd = self.tmp / name / "home", self.tmp / name / "cwd"
        home.mkdir(parents=True)
        cwd.mkdir(parents=True)
        env = {**self.base_env, **self.shared, "AIINFRA_HOME": str(home)}
        return {"home": home, "cwd": cwd, "env": env, "ray_tmp": self.ray_tmp / name}

    def start(self) -> None:
        head = self.nodes["head"] = self._node("head")
        # 3 CPUs a node: a DDP worker of churn_multinode.yaml asks for 2, so each node fits exactly one.
        common = ["--num-cpus=3", f"--node-ip-address={self.ip}", "--disable-usage-stats"]
        started = _run(head["env"], str(BIN / "ray"), "start", "--head", f"--port={self.port}", f"--temp-dir={head['ray_tmp']}",
                       f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true", *common,
                       cwd=head["cwd"], timeout=180)
        assert started.returncode == 0, started.stderr[-3000:]
        worker = self.nodes["worker"] = self._node("worker")
        joined = _run(worker["env"], str(BIN / "ray"), "start", f"--address={self.address}",
                      f"--temp-dir={worker['ray_tmp']}", *common,
                      cwd=worker["cwd"], timeout=180)
        assert joined.returncode == 0, joined.stderr[-3000:]
        deadline = time.monotonic() + 60
        while len(self.client_state("name=registry")["nodes"]) < 2:
            assert time.monotonic() < deadline, "the worker node did not join"
            time.sleep(1)

    def client_env(self, home: Path, **extra: str) -> dict:
        return {**self.base_env, "AIINFRA_HOME": str(home), "RAY_ADDRESS": self.address, **extra}

    def client_state(self, where: str) -> dict:
        return _state({**self.base_env, "RAY_ADDRESS": self.address}, where)

    def answered_requests(self, node: str) -> list[str]:
        """The access-log lines of router replicas on ``node`` for answered predictions (Serve's replica logs,
        in that node's own Ray temp dir)."""
        logs = self.nodes[node]["ray_tmp"].glob("session_*/logs/serve/replica_aiinfra_ModelServer_*.log")
        return [line for f in logs for line in f.read_text(errors="replace").splitlines() if "POST /predict" in line
                and " 200 " in line]

    def stop(self) -> None:
        # Stop exactly this cluster: every process that appeared since it started and names its GCS port
        # (head and worker raylets, GCS, dashboard, agents) together with their children (Ray's workers).
        port = self.port
        ours = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid not in self._before and (f":{port}" in cmd or f"_port={port}" in cmd or "ray::" in cmd):
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
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if f":{port}" in " ".join(p.info["cmdline"] or [])]
        assert not left, f"processes of the two-node cluster still running: {left}"
        # Ray's "current cluster" pointer went into the head's temp dir, not /tmp/ray: it goes with it.
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_state(postgres, s3_server) -> dict:
    """The state every node shares: a Postgres database of this module's own and a prefix on the S3 server."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request it answers
    database = f"multinode_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(database)
    prefix = f"multinode-{uuid.uuid4().hex[:8]}"
    yield {
        "env": {"AIINFRA_METADATA_URL": url, "AIINFRA_STORAGE_ROOT": f"s3://lake/{prefix}{s3_server['query']}",
                "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"},
        "query": s3_server["query"], "s3": s3_server["client"], "prefix": prefix,
    }
    postgres.drop_database(database)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, shared_state):
    nodes = TwoNodes(tmp_path_factory.mktemp("two-nodes"), shared_state["env"])
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def client(cluster, shared_state, tmp_path_factory) -> dict:
    """A user's shell: its own AIINFRA_HOME, the shared-state settings, RAY_ADDRESS to the head, and a
    config file asking for two router replicas."""
    home = tmp_path_factory.mktemp("client-home")
    serve_port = _free_port()
    config = home.parent / f"{home.name}-platform.yaml"
    config.write_text(yaml.safe_dump({"serve": {"min_replicas": 2, "max_replicas": 2, "port": serve_port}}))
    env = cluster.client_env(home, AIINFRA_CONFIG=str(config), **shared_state["env"])
    return {"env": env, "home": home, "serve_url": f"http://127.0.0.1:{serve_port}",
            # `train --submit` finds the job server through RAY_ADDRESS when it is the dashboard's URL.
            "job_env": {**env, "RAY_ADDRESS": cluster.dashboard}}


@pytest.fixture(scope="module")
def ingested(client, shared_state) -> dict:
    """`aiinfra data ingest customers s3://...`: a CSV in object storage (a local file would be on one node only)."""
    key = f"{shared_state['prefix']}/customers.csv"
    shared_state["s3"].put_object(Bucket="raw", Key=key, Body=make_customers(2_500, seed=5).to_csv(index=False).encode())
    done = aiinfra(client["env"], "data", "ingest", "customers", f"s3://raw/{key}{shared_state['query']}",
                   "--spec", "jobs/configs/customers_spec.yaml", "--json")
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def trained(client, ingested) -> subprocess.CompletedProcess:
    """`aiinfra train CONFIG --submit`: the pipeline as a Ray job; version 1, the champion."""
    done = _run(client["job_env"], str(BIN / "aiinfra"), "train", CONFIG, "--submit", timeout=420)
    assert done.returncode == 0, done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def token(client) -> str:
    """A predict token made with the CLI against the shared DB (no api_token file is made on Postgres)."""
    done = aiinfra(client["env"], "token", "create", "--role", "predict")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def deployed(client, trained) -> dict:
    done = aiinfra(client["env"], "serve", "deploy", f"{MODEL}@champion", "--json", timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def _predict(client: dict, token: str, n: int) -> list[dict]:
    import httpx

    row = {"tenure_months": 3.0, "monthly_charges": 120.0, "support_calls": 4, "plan": "basic", "region": "north"}
    answers = []
    for _ in range(n):
        # A new connection each time: the kernel spreads connections over the nodes' proxies (SO_REUSEPORT),
        # and each proxy prefers the router replica on its own node.
        r = httpx.post(f"{client['serve_url']}/predict/{MODEL}", json={"instances": [row]},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


def test_training_runs_one_ddp_worker_on_each_node(cluster, client, shared_state, trained):
    workers = cluster.client_state("class_name=RayTrainWorker")
    nodes = {a["node_id"] for a in workers["actors"]}
    assert len(workers["nodes"]) == 2 and nodes == set(workers["nodes"]), workers
    version = json.loads(aiinfra(client["env"], "models", "show", f"{MODEL}@champion", "--json").stdout)
    assert version["version"] == 1 and version["artifact_uri"].startswith("s3://lake/")
    run = json.loads(aiinfra(client["env"], "runs", "show", version["lineage"]["run_id"], "--json").stdout)
    assert run["status"] == "finished" and run["dataset_versions"][0].startswith("customers@")
    listed = shared_state["s3"].list_objects_v2(Bucket="lake", Prefix=f"{shared_state['prefix']}/checkpoints/")
    assert listed.get("KeyCount", 0) > 0  # the workers' checkpoints, under the storage root in object storage
    # No jobs.entrypoint_memory_bytes here: the job asked for its estimate, which a node of this cluster can hold.
    assert re.search(r"the job's driver will hold about \d+\.\d\d GiB .*; it asks for \d+\.\d\d GiB of a node's memory",
                     trained.stderr), trained.stderr[-3000:]


def test_router_replicas_on_both_nodes_answer_authenticated_predictions(cluster, client, deployed, token):
    answers = _predict(client, token, 30)
    assert {(a["model"], a["version"]) for a in answers} == {(MODEL, 1)}
    replicas = [a for a in cluster.client_state("class_name=ServeReplica:aiinfra:ModelServer")["actors"]
                if a["state"] == "ALIVE"]
    assert len(replicas) == 2 and len({a["node_id"] for a in replicas}) == 2, replicas
    answered = {node: len(cluster.answered_requests(node)) for node in cluster.nodes}
    assert all(answered.values()) and sum(answered.values()) >= len(answers), answered  # both nodes answered
    import httpx

    refused = httpx.post(f"{client['serve_url']}/predict/{MODEL}", json={"instances": [{}]}, timeout=30)
    assert refused.status_code == 401


def test_both_replicas_follow_the_champion_alias(client, deployed, token):
    second = aiinfra(client["env"], "train", CONFIG, timeout=420)  # this time the driver is the client's process
    assert second.returncode == 0, second.stderr[-5000:]
    # (Not read from train's stdout: Ray's driver prints the raylets' warnings there, "(raylet) WARNING: ...".)
    listed = json.loads(aiinfra(client["env"], "models", "show", MODEL, "--json").stdout)
    assert [v["version"] for v in listed["versions"]] == [1, 2], listed
    moved = aiinfra(client["env"], "models", "alias", MODEL, "2", "champion")
    assert moved.returncode == 0, moved.stderr[-3000:]
    deadline = time.monotonic() + 10
    while True:
        versions = {a["version"] for a in _predict(client, token, 10)}
        if versions == {2}:
            break
        assert time.monotonic() < deadline, f"answers still name {versions} 10 s after the alias moved"
        time.sleep(0.5)
    assert {a["version"] for a in _predict(client, token, 20)} == {2}


def test_registry_actor_killed_comes_back_with_every_model(cluster, client, trained):
    before = json.loads(aiinfra(client["env"], "models", "show", MODEL, "--json").stdout)
    registry = [a for a in cluster.client_state("name=registry")["actors"] if a["state"] == "ALIVE"]
    assert len(registry) == 1, registry
    os.kill(registry[0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        alive = [a for a in cluster.client_state("name=registry")["actors"]
                 if a["state"] == "ALIVE" and a["pid"] != registry[0]["pid"]]
        if alive:
            break
        assert time.monotonic() < deadline, "the registry actor did not restart"
        time.sleep(1)
    after = aiinfra(client["env"], "models", "show", MODEL, "--json")
    assert after.returncode == 0, after.stderr[-3000:]
    assert json.loads(after.stdout) == before


def test_no_node_gained_a_local_metadata_db(cluster, client, trained, deployed):
    dirs = [n[k] for n in cluster.nodes.values() for k in ("home", "cwd")] + [client["home"]]
    assert _no_metadata_db(*dirs) == []


def test_the_cluster_refuses_node_local_state(cluster, tmp_path):
    home = tmp_path / "local-home"
    env = cluster.client_env(home)  # no AIINFRA_METADATA_URL, no AIINFRA_STORAGE_ROOT: the SQLite default
    for done in (aiinfra(env, "train", CONFIG),
                 _run(env, sys.executable, "-c", "import aiinfra; aiinfra.connect()", timeout=120)):
        assert done.returncode != 0
        assert "metadata: {type: postgresql" in done.stderr and "storage_root: s3://" in done.stderr, done.stderr[-3000:]
    assert _no_metadata_db(home) == []
