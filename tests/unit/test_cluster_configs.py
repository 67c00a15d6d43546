"""clusters/: the cluster-launcher YAMLs pass Ray's own validator; the KubeRay manifests pass the CRD schemas."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# KubeRay's CRD schemas live beside the checkout (../shared/kuberay-crds) or where KUBERAY_CRDS_DIR says.
CRDS = Path(os.environ.get("KUBERAY_CRDS_DIR") or ROOT.parent / "shared" / "kuberay-crds")


def launcher(name: str) -> dict:
    return yaml.safe_load((ROOT / "clusters" / name).read_text())


def ray_validate(config: dict) -> dict:
    # Private API: this is why Ray is pinned exactly (RAY_NOTES.md).
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
