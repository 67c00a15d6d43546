"""One way to run a platform pipeline as a Ray job: ``submit``, used by the CLI (``aiinfra train --submit``)
and by the autopilot (its retrains).

The job gets the submitter's whole validated ``PlatformConfig`` (``AIINFRA_SUBMITTED_CONFIG`` in its
runtime_env), so a setting from a config file reaches it as surely as one from the environment.
Credentials are not shipped: a metadata URL or storage root with a password in it is left out, and the
job reads it from its nodes' own environment.

The job server is found the same way for every caller: an explicit address, ``RAY_ADDRESS`` when it is
a dashboard URL, the dashboard this driver's cluster advertises (inside a cluster: an actor or a job), or
the one `aiinfra up` recorded.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiinfra.cluster_access import cluster_state_file, use_cluster_auth
from aiinfra.config import ENV, PlatformConfig
from aiinfra.errors import ServiceUnavailable
from aiinfra.redaction import has_credentials

__all__ = ["JobState", "entrypoint_options", "follow", "job_server", "job_state", "shippable_config", "submit"]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def shippable_config(config: PlatformConfig) -> dict[str, Any]:
    """The config as the job gets it: everything but credentials (those come from the job's nodes) and the
    submitter's Ray address (the job joins the cluster it runs in: Ray gives its driver RAY_ADDRESS)."""
    data = config.model_dump(mode="json")
    # The submitter's address may be the dashboard's URL (what `train --submit` is pointed at) or one only the
    # submitter can reach (a port-forward); inside the job, ray.init() on it would fail.
    data.pop("ray_address", None)
    for field in ("metadata_url", "storage_root"):
        if has_credentials(data.get(field)):
            data.pop(field)
    if "metadata_url" not in data:
        data.pop("metadata", None)  # the typed form holds the same URL
    return data


def job_server(config: PlatformConfig, address: str | None = None) -> str:
    """The URL of the cluster's job server (its dashboard).

    Raises:
        ServiceUnavailable: no cluster with a dashboard is known; the message says what to start or set.
    """
    if address:
        return address
    if (config.ray_address or "").startswith("http"):
        return config.ray_address
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            from ray._private.services import get_webui_url_from_internal_kv  # private: Ray is pinned exactly

            url = get_webui_url_from_internal_kv()
            if url:
                return url if url.startswith("http") else f"http://{url}"
            raise ServiceUnavailable("this cluster has no dashboard, so no job server to submit to; "
                                     "start Ray with the dashboard (aiinfra up does)")
    state = cluster_state_file(config)
    if state.exists():
        url = json.loads(state.read_text()).get("dashboard_url")
        if url:
            return url
    raise ServiceUnavailable("no cluster to submit to: start one with `aiinfra up`, or set "
                             "RAY_ADDRESS=http://HEAD:8265 to the cluster's dashboard")


def _client(config: PlatformConfig, address: str | None) -> Any:
    use_cluster_auth(config)  # before Ray is imported here (the job client needs the cluster's token)
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(job_server(config, address))


def submit(config: PlatformConfig, entrypoint: str, *, name: str, working_dir: str | Path | None = None,
           submission_id: str | None = None, metadata: dict[str, str] | None = None,
           address: str | None = None, entrypoint_memory: int | None = None) -> str:
    """Submit ``entrypoint`` as a Ray job carrying ``config``; its submission id (``name-<8 hex>`` by default).
    ``entrypoint_memory``: the driver's memory request where ``jobs.entrypoint_memory_bytes`` sets none."""
    runtime_env: dict[str, Any] = {"env_vars": {ENV.SUBMITTED_CONFIG.name: json.dumps(shippable_config(config))}}
    if working_dir is not None:
        runtime_env["working_dir"] = str(working_dir)
    options = entrypoint_options(config)
    if entrypoint_memory and "entrypoint_memory" not in options:
        options["entrypoint_memory"] = int(entrypoint_memory)
    return _client(config, address).submit_job(
        entrypoint=entrypoint, submission_id=submission_id or f"{name}-{uuid.uuid4().hex[:8]}",
        runtime_env=runtime_env, metadata=metadata or {}, **options)


def node_memory(config: PlatformConfig, *, address: str | None = None) -> list[int]:
    """Each alive node's memory for tasks (Ray's logical ``memory`` resource), from the cluster's state API;
    empty where it cannot be read (the job is then sent without a memory request)."""
    use_cluster_auth(config)
    try:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=job_server(config, address), filters=[("state", "=", "ALIVE")], timeout=10)
    except Exception:  # noqa: BLE001 - advice for the request, never a reason not to submit
        return []
    return [int(n.resources_total.get("memory", 0)) for n in nodes if n.resources_total.get("memory")]


def entrypoint_options(config: PlatformConfig) -> dict[str, Any]:
    """The driver's resources (``jobs:`` in the config), as JobSubmissionClient.submit_job takes them."""
    j = config.jobs
    options: dict[str, Any] = {}
    if j.entrypoint_num_cpus:
        options["entrypoint_num_cpus"] = j.entrypoint_num_cpus
    if j.entrypoint_memory_bytes:
        options["entrypoint_memory"] = j.entrypoint_memory_bytes
    if j.entrypoint_resources:
        options["entrypoint_resources"] = dict(j.entrypoint_resources)
    return options


def job_state(config: PlatformConfig, job_id: str, *, address: str | None = None) -> JobState:
    info = _client(config, address).get_job_info(job_id)
    return JobState(job_id, str(getattr(info.status, "value", info.status)), info.message or "")


def job_logs(config: PlatformConfig, job_id: str, *, address: str | None = None) -> str:
    return _client(config, address).get_job_logs(job_id)


def follow(config: PlatformConfig, job_id: str, *, out: Any = sys.stdout, address: str | None = None,
           poll_s: float = 1.0) -> str:
    """Stream the job's logs to ``out`` until it ends; its final status (``RUNNING`` if the user stops following)."""
    client = _client(config, address)
    shown = 0
    try:
        while True:
            info = client.get_job_info(job_id)
            status = str(getattr(info.status, "value", info.status))
            logs = client.get_job_logs(job_id)
            if len(logs) > shown:
                out.write(logs[shown:])
                out.flush()
                shown = len(logs)
            if status in TERMINAL:
                return status
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on: `ray job logs {job_id}`", file=out, flush=True)
        return "RUNNING"
