"""clusters/: the cluster-launcher YAMLs pass Ray's own validator; the KubeRay manifests pass the CRD schemas.

Beyond validity, every config must give every node the platform's shared state (issue 12): the metadata
URL from a secret, never written in a file; an object-store storage root; Ray's GCS on an external Redis.
And every cluster is closed by default (issue 13): Ray's token authentication, a dashboard nobody outside
the cluster reaches, and on Kubernetes a NetworkPolicy that lets only the cluster's own pods in.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# KubeRay's CRD schemas live beside the checkout (shared/kuberay-crds next to it) or where KUBERAY_CRDS_DIR says.
CRDS = Path(os.environ.get("KUBERAY_CRDS_DIR") or ROOT.parent / "shared" / "kuberay-crds")


def launcher(name: str) -> dict:
    return yaml.safe_load((ROOT / "clusters" / name).read_text())


def ray_validate(config: dict) -> dict:
    # Private API: this is one reason Ray is pinned exactly.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_are_valid_and_shaped_as_promised(name):
    config = launcher(name)
    prepared = ray_validate(config)
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no work
    assert {"cpu_on_demand", "cpu_spot", "gpu_spot"} <= set(types)
    assert types["gpu_spot"]["resources"]["GPU"] >= 1
    assert config["idle_timeout_minutes"] > 0
    assert any("make install" in c for c in config["setup_commands"])  # set up from the pinned project
    spot = types["cpu_spot"]["node_config"]
    assert spot.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or {"preemptible": True} in spot.get("scheduling", [])


def _min_workers_past_max(c: dict) -> None:
    c["available_node_types"]["cpu_on_demand"]["min_workers"] = 3
    c["max_workers"] = 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(head_node_type="nope"),
        lambda c: c["available_node_types"]["cpu_spot"].update(resources={"CPU": "eight"}),
        _min_workers_past_max,
        lambda c: c.update(bogus_field=1),
    ],
)
def test_the_validator_does_refuse_broken_configs(mutate):
    config = launcher("aws.yaml")
    mutate(config)
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        ray_validate(config)


@functools.cache
def _load_crd(kind_file: str) -> dict:
    # The CRDs are about 1 MB each: the C loader reads them in a fraction of the pure-Python time.
    return yaml.load((CRDS / kind_file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def crd_schema(kind_file: str) -> dict:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {CRDS}")
    crd = _load_crd(kind_file)
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize(
    "manifest,crd",
    [
        ("raycluster.yaml", "ray.io_rayclusters.yaml"),
        ("rayjob.yaml", "ray.io_rayjobs.yaml"),
        ("rayservice.yaml", "ray.io_rayservices.yaml"),
    ],
)
def test_kuberay_manifests_match_the_crds(manifest, crd):
    schema = crd_schema(crd)
    doc = yaml.safe_load((ROOT / "clusters" / "kuberay" / manifest).read_text())
    jsonschema.validate(doc, schema)
    broken = copy.deepcopy(doc)
    spec = broken["spec"].get("rayClusterSpec") or broken["spec"].get("rayClusterConfig") or broken["spec"]
    spec["workerGroupSpecs"][0]["minReplicas"] = "two"  # the schema must notice a wrong type
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_raycluster_autoscales_with_gcs_fault_tolerance():
    doc = yaml.safe_load((ROOT / "clusters/kuberay/raycluster.yaml").read_text())
    assert doc["spec"]["enableInTreeAutoscaling"] is True
    assert doc["spec"]["gcsFaultToleranceOptions"]["redisAddress"]


def test_rayservice_serves_the_same_config_as_serve_configs():
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "clusters/kuberay/rayservice.yaml").read_text())
    embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "serve_configs/inference.yaml").read_text())
    ServeDeploySchema.model_validate(embedded)


# --- the shared state every node gets (issue 12) ---------------------------------------------------

LAUNCHER_SCHEMES = {"aws.yaml": "s3://", "gcp.yaml": "gs://"}
MANIFESTS = ["raycluster.yaml", "rayjob.yaml", "rayservice.yaml"]
METADATA_SECRET = {"name": "aiinfra-metadata", "key": "url"}
REDIS_SECRET = {"name": "aiinfra-redis", "key": "password"}
PLATFORM_CONFIGMAP = "aiinfra-platform"
# A password with every character that could break the env file's quoting.
TRICKY_URL = "postgresql://aiinfra:p$a\"ss w;o`r'd\\@db.internal:5432/aiinfra?sslmode=require"
REDIS_PASSWORD = "r3dis $(not run) `nor this`"
RAY_TOKEN = "0f1e2d3c" * 8  # as `ray get-auth-token --generate` or `openssl rand -hex 32` makes one


def _stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)


def _run_launcher_node(config: dict, tmp_path: Path, *, head: bool, secrets_readable: bool = True,
                       ray_token: str = RAY_TOKEN) -> dict | None:
    """Run one node's set-up and `ray start` commands as the launcher would, with the cloud CLIs and Ray stubbed.

    Returns what the stubbed `ray start` saw (its argv and environment), or None when a command failed.
    """
    home = tmp_path / ("head" if head else "worker")
    bin_dir = tmp_path / "bin"
    # The stubbed aws / gcloud answer like the real ones: the secret's value on stdout, nothing else.
    cli = (
        "#!/bin/sh\n"
        + ("" if secrets_readable else "echo 'AccessDenied' >&2; exit 254\n")
        + 'case "$*" in\n'
        '  *metadata-url*) printf "%s" "$STUB_METADATA_URL" ;;\n'
        '  *redis-password*) printf "%s" "$STUB_REDIS_PASSWORD" ;;\n'
        '  *ray-auth-token*) printf "%s" "$STUB_RAY_TOKEN" ;;\n'
        '  *) printf "a CA certificate" ;;\n'
        "esac\n"
    )
    _stub(bin_dir / "aws", cli)
    _stub(bin_dir / "gcloud", cli)
    _stub(
        home / "aiinfra/.venv/bin/ray",
        f"#!{sys.executable}\nimport json, os, sys\n"
        "if sys.argv[1] != 'stop':\n"
        "    json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, open(os.path.expanduser('~/ray_start.json'), 'w'))\n",
    )
    # No AIINFRA_* from the test's own environment: what ray start sees must come from the commands.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "RAY_HEAD_IP": "10.0.0.1",
           "STUB_METADATA_URL": TRICKY_URL, "STUB_REDIS_PASSWORD": REDIS_PASSWORD, "STUB_RAY_TOKEN": ray_token}
    commands = [c for c in config["setup_commands"] if "make install" not in c]
    commands += config["head_setup_commands"] if head else config["worker_setup_commands"]
    commands += config["head_start_ray_commands"] if head else config["worker_start_ray_commands"]
    for command in commands:
        if subprocess.run(["bash", "-c", command], env=env, cwd=home, capture_output=True).returncode != 0:
            return None
    started = home / "ray_start.json"
    return json.loads(started.read_text()) if started.exists() else None


@pytest.mark.skipif(shutil.which("bash") is None, reason="the launcher's commands are bash")
@pytest.mark.parametrize("name", sorted(LAUNCHER_SCHEMES))
def test_every_launcher_node_starts_ray_with_the_shared_state(name, tmp_path):
    config = launcher(name)
    head = _run_launcher_node(config, tmp_path, head=True)
    worker = _run_launcher_node(config, tmp_path, head=False)
    assert head and worker, "a node's set-up or ray start failed"
    for node, seen in (("head", head), ("worker", worker)):
        # The URL arrives intact through the env file, and the file is readable by its owner only.
        assert seen["env"]["AIINFRA_METADATA_URL"] == TRICKY_URL, node
        assert seen["env"]["AIINFRA_STORAGE_ROOT"].startswith(LAUNCHER_SCHEMES[name]), node
        assert stat.S_IMODE((tmp_path / node / "aiinfra.env").stat().st_mode) == 0o600
        assert seen["env"]["RAY_external_storage_namespace"] == head["env"]["RAY_external_storage_namespace"]
    # GCS fault tolerance: the head's GCS on the external Redis, with the password from the secret;
    # the password is an argument of ray start only, not exported to every process on the head.
    assert re.fullmatch(r"rediss?://[^/\s]+:\d+", head["env"]["RAY_REDIS_ADDRESS"])
    assert f"--redis-password={REDIS_PASSWORD}" in head["argv"]
    assert "--head" in head["argv"]
    assert not any(REDIS_PASSWORD in value for name, value in head["env"].items() if not name.startswith("STUB_"))
    # Workers never read the Redis password, and outlive a head restart.
    assert not (tmp_path / "worker" / "aiinfra-gcs-redis.password").exists()
    assert "RAY_REDIS_ADDRESS" not in worker["env"]
    assert int(worker["env"]["RAY_gcs_rpc_server_reconnect_timeout_s"]) > 60
    assert "--address=10.0.0.1:6379" in worker["argv"]
    # Token authentication: every node's `ray start` in token mode, with the token from the secret store in
    # Ray's default token file, readable by its owner only, and never in an argument or the environment.
    for node, seen in (("head", head), ("worker", worker)):
        assert seen["env"]["RAY_AUTH_MODE"] == "token", node
        token_file = tmp_path / node / ".ray" / "auth_token"
        assert token_file.read_text() == RAY_TOKEN, node
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, node
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700, node
        assert not any(RAY_TOKEN in arg for arg in seen["argv"]), node
        assert not any(RAY_TOKEN in value for name, value in seen["env"].items() if not name.startswith("STUB_")), node
    # The dashboard (job submission) on the head's loopback only: `ray dashboard` tunnels to it.
    assert "--dashboard-host=127.0.0.1" in head["argv"]
    # Serve's fast ingress (HAProxy), as on clusters `aiinfra up` starts: every node's Ray has it.
    assert head["env"]["RAY_SERVE_ENABLE_HA_PROXY"] == worker["env"]["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


@pytest.mark.skipif(shutil.which("bash") is None, reason="the launcher's commands are bash")
@pytest.mark.parametrize("name", sorted(LAUNCHER_SCHEMES))
def test_a_launcher_node_that_cannot_read_its_secret_does_not_start(name, tmp_path):
    # A node without the metadata URL would open an empty local state: its set-up must fail instead.
    assert _run_launcher_node(launcher(name), tmp_path, head=False, secrets_readable=False) is None
    assert not (tmp_path / "worker" / "aiinfra.env").exists()
    assert not (tmp_path / "worker" / ".ray" / "auth_token").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="the launcher's commands are bash")
@pytest.mark.parametrize("name", sorted(LAUNCHER_SCHEMES))
def test_a_launcher_node_whose_ray_token_is_empty_does_not_start(name, tmp_path):
    # An empty token file would make `ray start` refuse later with a vaguer message: the set-up fails first.
    for head in (True, False):
        assert _run_launcher_node(launcher(name), tmp_path, head=head, ray_token="") is None
        assert not (tmp_path / ("head" if head else "worker") / ".ray" / "auth_token").exists()


def test_launcher_nodes_reach_the_object_store_with_a_role_not_keys():
    aws = launcher("aws.yaml")["available_node_types"]
    assert all("IamInstanceProfile" in t["node_config"] for t in aws.values())
    gcp = launcher("gcp.yaml")
    # Ray's bootstrap gives the GCP head its own service account; the workers name theirs.
    for name, t in gcp["available_node_types"].items():
        if name != gcp["head_node_type"]:
            [account] = t["node_config"]["serviceAccounts"]
            assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"]


def kuberay(name: str) -> dict:
    return yaml.safe_load((ROOT / "clusters" / "kuberay" / name).read_text())


def kuberay_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "clusters" / "kuberay" / name).read_text()) if d]


def cluster_spec(doc: dict) -> dict:
    return doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]


def ray_pods(doc: dict) -> list[tuple[str, dict]]:
    spec = cluster_spec(doc)
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    return pods + [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]


def shared_state(doc: dict) -> set[tuple[str, str]]:
    """What a manifest's Ray containers take their state from: secrets, ConfigMaps, service accounts."""
    state = set()
    for _, pod in ray_pods(doc):
        state.add(("serviceAccount", pod.get("serviceAccountName", "")))
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    state.add((env["name"], f"secret {ref['name']}/{ref['key']}"))
            for source in container.get("envFrom", []):
                for kind, ref in source.items():
                    state.add(("envFrom", f"{kind} {ref['name']}"))
    return state


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_every_ray_container_gets_the_metadata_url_from_a_secret_and_the_storage_root(manifest):
    for group, pod in ray_pods(kuberay(manifest)):
        assert pod.get("serviceAccountName") == "aiinfra", group  # object-store access by IRSA / Workload Identity
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["AIINFRA_METADATA_URL"] == {
                "name": "AIINFRA_METADATA_URL", "valueFrom": {"secretKeyRef": METADATA_SECRET}}, group
            # The storage root comes from the one ConfigMap; a literal here would override it for this group only.
            assert "AIINFRA_STORAGE_ROOT" not in env, group
            assert {"configMapRef": {"name": PLATFORM_CONFIGMAP}} in container.get("envFrom", []), group


def test_the_platform_configmap_names_an_object_store_and_the_service_account_a_cloud_identity():
    docs = {d["kind"]: d for d in kuberay_docs("platform.yaml")}
    assert docs["ConfigMap"]["metadata"]["name"] == PLATFORM_CONFIGMAP
    assert re.fullmatch(r"(s3|gs)://[a-z0-9.-]+/\S+", docs["ConfigMap"]["data"]["AIINFRA_STORAGE_ROOT"])
    # Every Ray container takes this ConfigMap (test above): Serve's HAProxy ingress on every KubeRay cluster.
    assert docs["ConfigMap"]["data"]["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    account = docs["ServiceAccount"]
    assert account["metadata"]["name"] == "aiinfra"
    assert {"eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"} & set(account["metadata"]["annotations"])


def test_the_rayjob_and_the_rayservice_share_one_state():
    # The model the RayJob trains is the one the RayService serves only if both read the same registry
    # (the metadata secret) and the same artifacts (the storage root's ConfigMap).
    job, service, cluster = (shared_state(kuberay(m)) for m in ("rayjob.yaml", "rayservice.yaml", "raycluster.yaml"))
    assert job == service == cluster
    assert ("AIINFRA_METADATA_URL", "secret aiinfra-metadata/url") in job
    assert ("envFrom", f"configMapRef {PLATFORM_CONFIGMAP}") in job


@pytest.mark.parametrize("manifest", ["raycluster.yaml", "rayservice.yaml"])
def test_long_lived_clusters_keep_the_gcs_in_an_external_redis(manifest):
    doc = kuberay(manifest)
    spec = cluster_spec(doc)
    options = spec["gcsFaultToleranceOptions"]
    assert re.fullmatch(r"[\w.-]+:\d+", options["redisAddress"])
    assert options["redisPassword"] == {"valueFrom": {"secretKeyRef": REDIS_SECRET}}
    # KubeRay's operator refuses a cluster that sets these beside gcsFaultToleranceOptions (they are what
    # it sets itself), and keys each RayCluster's tables by its UID unless told otherwise.
    head = spec["headGroupSpec"]
    assert "redis-password" not in head["rayStartParams"] and "redis-username" not in head["rayStartParams"]
    head_env = {e["name"] for c in head["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert not head_env & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME"}
    annotations = doc["metadata"].get("annotations", {})
    assert not {"ray.io/ft-enabled", "ray.io/external-storage-namespace"} & set(annotations)
    assert "externalStorageNamespace" not in options


def test_the_in_cluster_postgres_takes_its_password_from_a_secret_it_does_not_hold():
    text = (ROOT / "clusters/kuberay/postgres.yaml").read_text()
    docs = {d["kind"]: d for d in kuberay_docs("postgres.yaml")}
    assert set(docs) == {"Service", "StatefulSet"}  # no Secret: the password is generated by the user
    service, postgres = docs["Service"], docs["StatefulSet"]
    labels = postgres["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels == postgres["spec"]["selector"]["matchLabels"]
    [container] = postgres["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "aiinfra-postgres", "key": "password"}
    # The URL the header tells the user to store in aiinfra-metadata reaches this Service as this user.
    [(user, host, port, db)] = re.findall(r"postgresql://(\w+):\$PW@([\w-]+):(\d+)/(\w+)", text)
    assert (user, db) == (env["POSTGRES_USER"]["value"], env["POSTGRES_DB"]["value"])
    assert (host, int(port)) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])


# --- no credential is ever committed under clusters/ ------------------------------------------------

_URL_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://([^\s:/@'\"]+):([^\s@'\"]+)@")
_PLACEHOLDER = re.compile(r"<[^<>\s]+>")
_PASSWORD_FIELD = re.compile(
    r"(?im)^[ \t-]*[\"']?[\w.-]*(?:password|passwd|secret|token)[\"']?[ \t]*[:=][ \t]*[\"']?(?P<value>[^\s\"'#,}]+)")
_REDIS_PASSWORD_FLAG = re.compile(r"--redis-password[= ]+(?P<value>[A-Za-z0-9]\S*)")
_CREDENTIAL_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),                                 # an AWS access key id
    re.compile(r"(?i)aws_secret_access_key\W{1,4}[A-Za-z0-9/+]{40}"),              # an AWS secret key
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"private_key\"\s*:"),                                             # a GCP service-account key file
]


def _is_reference(value: str) -> bool:
    """A <placeholder> for the reader, or a shell expansion ($PW, $(cat file)) that reads the secret at run time."""
    return bool(_PLACEHOLDER.fullmatch(value)) or value.startswith("$")


def inline_credentials(text: str) -> list[str]:
    found = [m.group(0) for m in _URL_WITH_PASSWORD.finditer(text) if not _is_reference(m.group(2))]
    found += [m.group(0) for m in _PASSWORD_FIELD.finditer(text)
              if not _is_reference(m.group("value")) and m.group("value") not in {"|", ">", ">-", "{"}]
    found += [m.group(0) for m in _REDIS_PASSWORD_FLAG.finditer(text)]
    return found + [m.group(0) for p in _CREDENTIAL_PATTERNS for m in p.finditer(text)]


@pytest.mark.parametrize(
    "planted",
    [
        "url: postgresql://aiinfra:hunter2@db.internal:5432/aiinfra",
        "AIINFRA_METADATA_URL=postgresql+psycopg://u:s3cr3t@10.0.0.3/aiinfra",
        "redis://default:letmein@aiinfra-redis:6379",
        "  password: REPLACE-ME",
        "ray start --head --redis-password=hunter2",
        "aws_access_key_id = " + "AKIA" + "IOSFODNN7EXAMPLE",
        "aws_secret_access_key: " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "-----BEGIN " + "PRIVATE KEY-----",
    ],
)
def test_the_credential_scan_finds_a_planted_credential(planted):
    assert inline_credentials(f"# a file\n{planted}\n")


@pytest.mark.parametrize(
    "placeholder",
    [
        "postgresql://aiinfra:<password>@aiinfra.xxxx.rds.amazonaws.com:5432/aiinfra",
        'url="postgresql://aiinfra:$PW@aiinfra-postgres:5432/aiinfra"',
        "secretKeyRef: {name: aiinfra-redis, key: password}",
        "    redisPassword:\n      valueFrom:",
        '--redis-password="$(cat ~/aiinfra-gcs-redis.password)"',
    ],
)
def test_the_credential_scan_lets_placeholders_and_secret_references_through(placeholder):
    assert not inline_credentials(placeholder)


def test_no_file_under_clusters_holds_an_inline_credential():
    files = [p for p in (ROOT / "clusters").rglob("*") if p.is_file()]
    assert files
    found = {str(p.relative_to(ROOT)): hits for p in files if (hits := inline_credentials(p.read_text()))}
    assert not found
    # Nor a Kubernetes Secret with values: secrets are created by hand (kubectl create secret), not applied from here.
    for path in (ROOT / "clusters").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                assert not (doc.get("data") or doc.get("stringData")), path


# --- every cluster closed by default (issue 13) ------------------------------------------------------
# Anyone who reaches an open Ray dashboard, GCS or client port can run code with the cluster's cloud role
# (CVE-2023-48022, "ShadowRay"). These tests walk the whole directory, so a file added later is held to
# the same rules without being named here.

CLUSTERS = ROOT / "clusters"
RAY_TOKEN_SECRET = "aiinfra-ray-token"
LOOPBACK = {"127.0.0.1", "localhost"}
# KubeRay's operator drives these kinds through the head's dashboard (it submits the job or deploys Serve
# and polls their status), so their dashboard must listen beyond the pod's loopback; the token and the
# NetworkPolicy guard it instead.
OPERATOR_DRIVEN = {"RayJob", "RayService"}
# Whoever may reach a port beside the cluster's own pods: Serve's HTTP API (the ingress), the metrics
# port (Prometheus) and, for operator-driven kinds only, the dashboard (the operator).
SERVE_PORT, METRICS_PORT, DASHBOARD_PORT = 8000, 8080, 8265
CLUSTER_LABEL = "aiinfra.io/ray-cluster"
_DASHBOARD_HOST = re.compile(r"dashboard[-_]host\W{1,4}([\w.:]+)")


def cluster_files() -> dict[str, list]:
    """Every file under clusters/, by path relative to it, with its YAML documents (none for other files)."""
    files = {}
    for path in sorted(p for p in CLUSTERS.rglob("*") if p.is_file()):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d] if path.suffix in {".yaml", ".yml"} else []
        files[str(path.relative_to(CLUSTERS))] = docs
    return files


def is_launcher(doc) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "head_node_type" in doc


def is_kuberay(doc) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ray.io/")


def ray_clusters() -> dict[str, dict]:
    found = {name: doc for name, docs in cluster_files().items() for doc in docs if is_launcher(doc) or is_kuberay(doc)}
    # The directory walk must find what ships today, or it would pass by finding nothing.
    assert {"aws.yaml", "gcp.yaml", "fake_multinode.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
            "kuberay/rayservice.yaml"} <= set(found)
    return found


def start_commands(config: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config.get(key) or []]


def test_every_ray_cluster_under_clusters_runs_token_auth():
    for name, doc in ray_clusters().items():
        if is_launcher(doc) and doc["provider"]["type"] == "fake_multinode":
            # The fake provider runs no commands from its file: its nodes take the auth mode of the head that
            # loads it (tests/e2e/test_autoscaling.py sets RAY_AUTH_MODE). Nothing here may start Ray otherwise.
            assert not any(doc.get(k) for k in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                                                "head_start_ray_commands", "worker_start_ray_commands")), name
            assert doc["provider"].get("disable_node_updaters") is True, name
        elif is_launcher(doc):
            starts = [c for c in start_commands(doc) if "ray start" in c]
            assert len(starts) == 2, name  # the head's and the workers'
            assert all("RAY_AUTH_MODE=token" in c for c in starts), name
            # Every node (setup_commands run on all of them) writes the token where Ray looks by default.
            assert any("~/.ray/auth_token" in c for c in doc["setup_commands"]), name
        else:
            assert cluster_spec(doc).get("authOptions") == {"mode": "token", "secretName": RAY_TOKEN_SECRET}, name
            for group, pod in ray_pods(doc):
                # KubeRay sets these from authOptions; a container's own value would override it.
                for container in pod["containers"]:
                    assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {e["name"] for e in container.get("env", [])}, \
                        (name, group)


def test_no_file_under_clusters_turns_token_auth_off():
    for name in cluster_files():
        text = (CLUSTERS / name).read_text()
        assert not re.search(r"RAY_AUTH_MODE\W{1,4}disabled|mode:\s*disabled|enableK8sTokenAuth", text), name


def _dashboard_hosts(doc: dict) -> list[str]:
    if is_launcher(doc):
        return [h for c in start_commands(doc) for h in _DASHBOARD_HOST.findall(c)]
    host = cluster_spec(doc)["headGroupSpec"].get("rayStartParams", {}).get("dashboard-host")
    return [host] if host is not None else []


def test_no_ray_dashboard_under_clusters_is_public():
    for name, doc in ray_clusters().items():
        hosts = _dashboard_hosts(doc)
        if is_launcher(doc) and doc["provider"]["type"] == "fake_multinode":
            assert hosts == [], name  # Ray's own default: loopback
        elif is_kuberay(doc) and doc["kind"] in OPERATOR_DRIVEN:
            # Explicit, because left out KubeRay binds every interface anyway; the NetworkPolicy test below
            # checks who may reach it.
            assert hosts in (["0.0.0.0"], ["127.0.0.1"]), name
        else:
            # Set explicitly: KubeRay binds every interface when dashboard-host is left out.
            assert hosts and set(hosts) <= LOOPBACK, name


def _allowed_any_address(docs: list) -> int:
    """How many times a file may name 0.0.0.0: an operator-driven dashboard and a Serve HTTP proxy."""
    allowed = 0
    for doc in docs:
        if is_kuberay(doc) and doc["kind"] in OPERATOR_DRIVEN and _dashboard_hosts(doc) == ["0.0.0.0"]:
            allowed += 1
        if is_kuberay(doc) and "serveConfigV2" in doc["spec"]:
            # Serve's proxy is the one listener meant to be reached (by the ingress, as the policy says).
            allowed += yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]["host"] == "0.0.0.0"
    return allowed


def test_no_file_under_clusters_binds_anything_else_to_every_interface():
    for name, docs in cluster_files().items():
        assert (CLUSTERS / name).read_text().count("0.0.0.0") <= _allowed_any_address(docs), name


def network_policies() -> list[dict]:
    return [d for docs in cluster_files().values() for d in docs
            if isinstance(d, dict) and d.get("kind") == "NetworkPolicy"]


def _pod_labels(doc: dict) -> set[tuple]:
    spec = cluster_spec(doc)
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return {tuple(sorted(t.get("metadata", {}).get("labels", {}).items())) for t in templates}


def test_every_kuberay_cluster_is_behind_a_networkpolicy_that_admits_only_its_own_pods():
    policies = network_policies()
    manifests = {name: doc for name, doc in ray_clusters().items() if is_kuberay(doc)}
    clusters = set()
    for name, doc in manifests.items():
        [labels] = _pod_labels(doc)  # head and workers carry the same label, so one policy covers them all
        cluster = dict(labels)[CLUSTER_LABEL]
        clusters.add(cluster)
        [policy] = [p for p in policies if p["spec"]["podSelector"] == {"matchLabels": {CLUSTER_LABEL: cluster}}]
        assert "Ingress" in policy["spec"]["policyTypes"], name
        rules = policy["spec"]["ingress"]
        own = {"podSelector": {"matchLabels": {CLUSTER_LABEL: cluster}}}
        assert {"from": [own]} in rules, name  # the cluster's pods reach each other on every Ray port
        outside_ports = set()
        for rule in rules:
            if rule == {"from": [own]}:
                continue
            # Anyone else: named peers only (no rule open to all, no address block) and named ports only.
            assert rule.get("from") and rule.get("ports"), (name, rule)
            assert all(peer.get("podSelector", {}).get("matchLabels") and "ipBlock" not in peer
                       for peer in rule["from"]), (name, rule)
            outside_ports |= {p["port"] for p in rule["ports"]}
        serves = any(p.get("containerPort") == SERVE_PORT or p.get("name") == "serve"
                     for _, pod in ray_pods(doc) for c in pod["containers"] for p in c.get("ports", []))
        assert outside_ports <= {SERVE_PORT, METRICS_PORT, DASHBOARD_PORT}, name
        assert (SERVE_PORT in outside_ports) == (serves or "serveConfigV2" in doc["spec"]), name
        # The dashboard beyond the pod only where the operator needs it, and then only for the operator.
        assert (DASHBOARD_PORT in outside_ports) == (doc["kind"] in OPERATOR_DRIVEN), name
    assert len(clusters) == len(manifests)  # one label, and one policy, per cluster


def test_every_ray_cluster_under_clusters_passes_its_validator():
    # The tests above name today's files; this holds a new one to Ray's validator or its CRD as well.
    for doc in ray_clusters().values():
        if is_launcher(doc) and doc["provider"]["type"] == "fake_multinode":
            # Ray's wheel lacks the fake provider's defaults that prepare_config merges in: the schema alone.
            from ray.autoscaler._private.util import validate_config

            validate_config(copy.deepcopy(doc))
        elif is_launcher(doc):
            ray_validate(doc)
        else:
            jsonschema.validate(doc, crd_schema(f"ray.io_{doc['kind'].lower()}s.yaml"))
