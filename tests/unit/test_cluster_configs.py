"""clusters/: the cluster-launcher YAMLs pass Ray's own validator; the KubeRay manifests pass the CRD schemas.

Beyond validity, every config must give every node the platform's shared state (issue 12): the metadata
URL from a secret, never written in a file; an object-store storage root; Ray's GCS on an external Redis.
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


def _stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)


def _run_launcher_node(config: dict, tmp_path: Path, *, head: bool, secrets_readable: bool = True) -> dict | None:
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
           "STUB_METADATA_URL": TRICKY_URL, "STUB_REDIS_PASSWORD": REDIS_PASSWORD}
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


@pytest.mark.skipif(shutil.which("bash") is None, reason="the launcher's commands are bash")
@pytest.mark.parametrize("name", sorted(LAUNCHER_SCHEMES))
def test_a_launcher_node_that_cannot_read_its_secret_does_not_start(name, tmp_path):
    # A node without the metadata URL would open an empty local state: its set-up must fail instead.
    assert _run_launcher_node(launcher(name), tmp_path, head=False, secrets_readable=False) is None
    assert not (tmp_path / "worker" / "aiinfra.env").exists()


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
