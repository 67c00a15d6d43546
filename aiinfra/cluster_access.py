"""Which Ray cluster this process talks to, and how: the cluster `aiinfra up` started, ``RAY_ADDRESS``, or none.

Used by ``aiinfra.connect()`` and the CLI before they import Ray (Ray reads its auth mode at import).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import sys
from pathlib import Path

import psutil

from aiinfra.config import PlatformConfig, local_state_problem
from aiinfra.errors import InvalidInput

__all__ = [
    "clear_stale_cluster_pointer", "cluster_state_file", "ensure_ray_token", "foreign_clusters", "ray_token_file",
    "require_shared_state", "running_cluster", "use_cluster_auth",
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


def ray_token_file() -> Path:
    """Where Ray 2.60 keeps (and every local client reads) the cluster token: ``~/.ray/auth_token``."""
    return Path.home() / ".ray" / "auth_token"


def ensure_ray_token() -> str:
    """The Ray token file exists, is this user's, and only this user may read it; what was done, in words.

    Ray itself writes the file with the process's umask (0644 here): anyone on the machine could then read
    the token and run code on the cluster. So it is made here first, 0600 from its first byte (``O_EXCL``:
    never someone else's file; ``O_NOFOLLOW``: never through a planted link), with a token like Ray's own
    (256 random bits, hex). An existing one is kept, tightened to 0600 if it was readable by others, and
    refused if another user owns it.

    Raises:
        InvalidInput: the file (or ``~/.ray``) belongs to another user, or is not a regular file.
    """
    path = ray_token_file()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{path} is not a regular file (a link?); remove it and run `aiinfra up` again") from None
        if info.st_uid != os.getuid():
            raise InvalidInput(f"{path} belongs to another user (uid {info.st_uid}): Ray would use their token; "
                               "remove it, or run as that user") from None
        if info.st_mode & 0o077:
            os.chmod(path, 0o600, follow_symlinks=False)
            return f"{path} was readable by others ({stat.filemode(info.st_mode)}): now 0600"
        return f"{path} kept (0600)"
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return f"{path} created (0600)"


def _gcs_addresses_by_owner() -> dict[str, set[int]]:
    """Each local GCS address, with the uids of the processes that name it (Ray's own discovery reads
    every user's processes alike; a cluster of another user's must not be joined as ours)."""
    found: dict[str, set[int]] = {}
    for proc in psutil.process_iter(["cmdline", "uids"]):
        try:
            cmdline, uids = proc.info["cmdline"] or [], proc.info["uids"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        # As Ray's own discovery reads them: a renamed process (setproctitle) keeps its arguments in one string.
        for arg in (part for element in cmdline for part in element.split(" ")):
            address = arg.split("=", 1)[1] if arg.startswith("--gcs-address=") else ""
            if address not in ("", "None") and uids is not None:
                found.setdefault(address, set()).add(uids.real)
    return found


def foreign_clusters() -> list[str]:
    """Local Ray clusters run by other users: never joined, named so that ``aiinfra up`` can say why."""
    me = os.getuid()
    return sorted(a for a, uids in _gcs_addresses_by_owner().items() if me not in uids)


def running_cluster(config: PlatformConfig) -> str | None:
    """The address of the cluster to use: RAY_ADDRESS, else a Ray head this user runs on this machine."""
    if config.ray_address:
        return config.ray_address
    from ray._private.services import find_gcs_addresses  # private: Ray is pinned exactly

    mine = {a for a, uids in _gcs_addresses_by_owner().items() if os.getuid() in uids}
    # A GCS process that is shutting down still shows in the process list: only one that
    # accepts connections counts, or a driver would join a dying cluster and wait forever.
    for address in sorted(a for a in find_gcs_addresses() if a in mine):
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
