"""Where a run came from: the code (git commit with a dirty flag, or the package version) and the
environment it ran in (Python, the lock file's hash, the versions of the packages that shape a model).

Both are recorded with every run and registered version; ``aiinfra reproduce`` compares the recorded
environment with the current one, so a difference in the metrics can be told from a new numpy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiinfra

__all__ = ["LOCK_FILE", "PACKAGES", "code_version", "describe_change", "environment", "environment_changes"]

LOCK_FILE = "requirements.lock"
LOCK_KEY = "lock_sha256"

# aiinfra's runtime dependencies (tests/unit/test_environment.py keeps this in step with pyproject.toml)
# and alibi-detect, the opt-in drift backend (recorded when installed). The lock's hash covers every other package.
PACKAGES = (
    "ray", "torch", "alibi-detect", "numpy", "pyarrow", "pandas", "scipy", "scikit-learn", "fastapi",
    "pydantic", "pyyaml", "safetensors", "httpx", "psutil", "matplotlib", "jinja2", "sqlalchemy", "psycopg", "river",
    "xgboost-cpu", "lightgbm", "onnx", "onnxruntime", "onnxscript", "onnxmltools", "skl2onnx", "ml-dtypes",
    "tritonclient", "grpcio",
)


def code_version(path: str | Path | None = None) -> str:
    """``git:<sha>`` or ``git:<sha>-dirty`` inside a checkout, else ``aiinfra==<version>``."""
    cwd = Path(path) if path else Path(aiinfra.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"aiinfra=={aiinfra.__version__}"
    return f"git:{sha}{'-dirty' if dirty else ''}"


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _lock_sha256(lock: Path) -> str | None:
    try:
        return hashlib.sha256(lock.read_bytes()).hexdigest()
    except OSError:  # installed from a wheel: no checkout, no lock beside it
        return None


def environment(lock: str | Path | None = None, packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """What this process runs on, as JSON: ``python``, ``platform``, ``lock_sha256`` (None outside a
    checkout) and ``packages`` (name -> installed version, None when not installed)."""
    path = Path(lock) if lock else Path(aiinfra.__file__).resolve().parent.parent / LOCK_FILE
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system().lower()}-{platform.machine()}",
        LOCK_KEY: _lock_sha256(path),
        "packages": {name: _installed(name) for name in packages},
    }


def environment_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What differs between two environments, one ``{"name", "recorded", "current"}`` per difference:
    ``python``, ``platform``, each package, then ``requirements.lock`` (by hash).

    Only what both sides know is compared: a package added to PACKAGES after the recording, or a lock
    missing on one side (an install from a wheel), is unknown there, not a difference.
    """
    changes: list[dict[str, Any]] = []

    def differs(name: str, old: Any, new: Any) -> None:
        if old != new:
            changes.append({"name": name, "recorded": old, "current": new})

    for key in ("python", "platform"):
        if key in recorded and key in current:
            differs(key, recorded[key], current[key])
    old_packages, new_packages = recorded.get("packages") or {}, current.get("packages") or {}
    for name in sorted(old_packages.keys() & new_packages.keys()):
        differs(name, old_packages[name], new_packages[name])
    if recorded.get(LOCK_KEY) and current.get(LOCK_KEY):
        differs(LOCK_FILE, recorded[LOCK_KEY], current[LOCK_KEY])
    return changes


def describe_change(change: Mapping[str, Any]) -> str:
    """``numpy 1.26.4 -> 2.0.2``; a package not installed on one side reads ``absent``, a lock hash is cut to 12."""

    def shown(value: Any) -> str:
        if value is None:
            return "absent"
        return value[:12] if change["name"] == LOCK_FILE else str(value)

    return f"{change['name']} {shown(change['recorded'])} -> {shown(change['current'])}"
