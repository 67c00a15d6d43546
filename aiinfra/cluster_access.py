"""Which Ray cluster this process talks to, and how: the cluster `aiinfra up` started, ``RAY_ADDRESS``, or none.

Used by ``aiinfra.connect()`` and the CLI before they import Ray (Ray reads its auth mode at import).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from aiinfra.config import PlatformConfig, local_state_problem
from aiinfra.errors import InvalidInput

__all__ = [
    "clear_stale_cluster_pointer", "cluster_state_file", "require_shared_state", "running_cluster", "use_cluster_auth",
]


def cluster_state_file(config: PlatformConfig) -> Path:
    """What `aiinfra up` records about the cluster it started (addresses, auth mode, process ids)."""
    return config.home / "cluster.json"


def use_cluster_auth(config: PlatformConfig) -> None:
    """A cluster that wants Ray's token from its clients: say so to this process's Ray.

    Effective only before Ray is imported (Ray reads the setting at import). A cluster `up` started
    records its mode; a local one started by ``ray.init()`` or ``ray start`` uses a token exactly
    when ``~/.ray/auth_token`` exists (checked with Ray 2.60), so a client does the same."""
    if "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        # Ray read its mode when it was imported: changing it now would make this process disagree
        # with a cluster it starts (the GCS would want a token the driver does not send).
        return
    state = cluster_state_file(config)
    if state.exists():
        try:
            if json.loads(state.read_text()).get("auth_mode") == "token":
                os.environ["RAY_AUTH_MODE"] = "token"
                return
        except (OSError, ValueError):
            pass
    if (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def clear_stale_cluster_pointer(temp_dir: str | Path = "/tmp/ray") -> bool:
    """Forget Ray's "current cluster" when that cluster is gone; True if the pointer was removed.

    ``ray start`` records its GCS address in ``/tmp/ray/ray_current_cluster``, and code that asks for
    the "auto" address reads it: Ray Train V2's placement-group cleaner does, through the State API,
    even inside a different, healthy cluster. A pointer to a dead cluster there makes it fail, and a
    stopped Tune trial's CPUs are then never freed (the next trial waits forever). Only a pointer to
    an address that accepts no connection is removed.
    """
    pointer = Path(temp_dir) / "ray_current_cluster"
    try:
        address = pointer.read_text().strip().splitlines()[0]
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1.0):
            return False
    except (OSError, ValueError, IndexError):
        pass
    try:
        pointer.unlink()
        return True
    except OSError:
        return False


def running_cluster(config: PlatformConfig) -> str | None:
    """The address of the cluster to use: RAY_ADDRESS, else a Ray head running on this machine."""
    if config.ray_address:
        return config.ray_address
    from ray._private.services import find_gcs_addresses  # private: Ray is pinned exactly

    # A GCS process that is shutting down still shows in the process list: only one that
    # accepts connections counts, or a driver would join a dying cluster and wait forever.
    for address in sorted(find_gcs_addresses()):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return address
        except (OSError, ValueError):
            continue
    return None


def require_shared_state(config: PlatformConfig) -> None:
    """Refuse to run the platform on a cluster of several nodes whose state is on one node's disk.

    Called where state is opened on a cluster: ``connect()``, every platform actor's start (restarts
    included: a restart may land on another node), and the Serve application's build.

    Raises:
        InvalidInput: the message says what to configure (``metadata.type: postgresql``, ``storage_root: s3://``).
    """
    import ray  # here: this module is imported before connect() sets Ray's auth mode

    if not ray.is_initialized():
        return
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    problem = local_state_problem(config, nodes)
    if problem is not None:
        raise InvalidInput(problem)
