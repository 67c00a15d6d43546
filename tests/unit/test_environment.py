"""The recorded environment (no Ray): what is captured, what a difference reads like, old lineages."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
from pathlib import Path

import numpy as np

from aiinfra.cli.runs import _print_environment
from aiinfra.provenance import LOCK_FILE, PACKAGES, describe_change, environment, environment_changes
from aiinfra.registry.types import Lineage, ModelVersion

REPO = Path(__file__).resolve().parents[2]


def _env(**packages: str | None) -> dict:
    return {"python": "3.11.7", "platform": "linux-x86_64", "lock_sha256": "a" * 64,
            "packages": {"numpy": "1.26.4", "torch": "2.13.0+cpu", **packages}}


def test_environment_records_python_the_packages_and_the_lock_hash(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_text("numpy==1.26.4 --hash=sha256:00\n")
    env = environment(lock, packages=("numpy", "no-such-package-aiinfra"))
    assert env["python"] == platform.python_version()
    assert env["platform"] == f"{platform.system().lower()}-{platform.machine()}"
    assert env["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert env["packages"] == {"numpy": np.__version__, "no-such-package-aiinfra": None}


def test_environment_outside_a_checkout_has_no_lock_hash(tmp_path):
    assert environment(tmp_path / "missing.lock", packages=())["lock_sha256"] is None


def test_environment_by_default_hashes_the_repository_lock():
    env = environment()
    assert env["lock_sha256"] == hashlib.sha256((REPO / LOCK_FILE).read_bytes()).hexdigest()
    assert set(env["packages"]) == set(PACKAGES)


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def test_packages_cover_every_runtime_dependency():
    runtime = {_name(r) for r in importlib.metadata.requires("aiinfra") or [] if "extra ==" not in r}
    assert runtime <= set(PACKAGES), f"add {sorted(runtime - set(PACKAGES))} to aiinfra.provenance.PACKAGES"


def test_the_lock_holds_the_exact_pins_of_pyproject_and_hashes_every_package():
    lock = (REPO / LOCK_FILE).read_text()
    pins = dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", lock, flags=re.MULTILINE))
    assert pins["ray"] == "2.60.0" and pins["torch"].startswith("2.13.0") and pins["alibi-detect"] == "0.13.0"
    assert {"pytest", "moto", "schemathesis", "import-linter", "ruff", "setuptools"} <= pins.keys()
    # pip's --require-hashes refuses a lock with any package unhashed.
    hashed = re.findall(r"^([a-z0-9._-]+)==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}", lock, flags=re.MULTILINE)
    assert set(hashed) == pins.keys()


def test_the_same_environment_has_no_changes():
    assert environment_changes(_env(), _env()) == []


def test_changes_name_each_package_python_and_the_lock():
    recorded = _env()
    current = {**_env(numpy="2.0.2", torch=None), "python": "3.11.9", "lock_sha256": "b" * 64}
    changes = environment_changes(recorded, current)
    assert changes == [
        {"name": "python", "recorded": "3.11.7", "current": "3.11.9"},
        {"name": "numpy", "recorded": "1.26.4", "current": "2.0.2"},
        {"name": "torch", "recorded": "2.13.0+cpu", "current": None},
        {"name": LOCK_FILE, "recorded": "a" * 64, "current": "b" * 64},
    ]
    assert [describe_change(c) for c in changes] == [
        "python 3.11.7 -> 3.11.9", "numpy 1.26.4 -> 2.0.2", "torch 2.13.0+cpu -> absent",
        f"{LOCK_FILE} aaaaaaaaaaaa -> bbbbbbbbbbbb",
    ]


def test_what_one_side_does_not_know_is_not_a_change():
    recorded = {**_env(), "lock_sha256": None}
    del recorded["platform"]
    current = _env(scipy="1.17.1")  # scipy recorded only from now on
    assert environment_changes(recorded, current) == []
    assert environment_changes({}, current) == []


def _version(**lineage) -> ModelVersion:
    return ModelVersion.model_validate({
        "name": "churn", "version": 1, "status": "active", "created_at": 0.0, "created_by": "t",
        "artifact_uri": "file:///x", "files": {}, "lineage": lineage,
    })


def test_old_lineages_load_with_their_feature_view_typed_and_no_environment():
    old = _version(dataset_version="customers@1", run_id="run-1", feature_view="customer_profile", config_hash="c")
    assert old.lineage.feature_view == "customer_profile"
    assert old.lineage.environment is None
    assert (old.lineage.model_extra or {}) == {"config_hash": "c"}  # later stages' keys are still kept
    assert _version().lineage == Lineage()
    new = _version(environment=_env())
    assert ModelVersion.model_validate_json(new.model_dump_json()).lineage.environment == _env()


def _result(changes):
    return {"model": "churn@1", "environment": {"recorded": None if changes is None else _env(), "current": _env(),
                                                "changes": changes}}


def test_reproduce_reports_the_environment_without_failing(capsys):
    _print_environment(_result(None))
    _print_environment(_result([]))
    _print_environment(_result([{"name": "numpy", "recorded": "1.26.4", "current": "2.0.2"}]))
    assert capsys.readouterr().out.splitlines() == [
        "  environment not recorded with churn@1 (registered before environments were)",
        "  environment matches the recorded one",
        "  environment DIFFERS from the recorded one in 1 place(s):",
        "    numpy 1.26.4 -> 2.0.2",
    ]
