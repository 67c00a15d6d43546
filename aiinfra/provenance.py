"""Where code came from: the git commit (with a dirty flag) or, outside a checkout, the package version."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiinfra


def code_version(path: str | Path | None = None) -> str:
    """``git:<sha>`` or ``git:<sha>-dirty`` inside a checkout, else ``aiinfra==<version>``."""
    cwd = Path(path) if path else Path(aiinfra.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"aiinfra=={aiinfra.__version__}"
    return f"git:{sha}{'-dirty' if dirty else ''}"
