"""What the verb groups share: JSON and time output, finding the running cluster, opening the platform."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from aiinfra.cluster_access import running_cluster, use_cluster_auth
from aiinfra.pipelines.progress import StageLog

_JSON_OUT: list[Any] = []  # where print_json writes while json_stdout() holds stdout for it


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """While inside: stdout is stderr, and ``print_json`` writes to the real stdout."""
    _JSON_OUT.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _JSON_OUT.pop()


def print_json(value: Any) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, BaseModel):
            return o.model_dump(mode="json")
        if hasattr(o, "to_dict"):
            return o.to_dict()
        return str(o)

    out = _JSON_OUT[-1] if _JSON_OUT else sys.stdout
    json.dump(value, out, default=default, indent=2)
    out.write("\n")
    out.flush()


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cluster_running(config: Any) -> bool:
    use_cluster_auth(config)  # before anything imports Ray
    return running_cluster(config) is not None


def open_platform(config: Any) -> Any:
    """Through the registry actor when a cluster is running; else straight to the stores.

    With no cluster there is no registry actor to go around, and starting Ray (5 to 10 s)
    for a listing would be a poor trade; the metadata DB's transactions keep direct access safe.
    """
    # Inside: the platform loads the stores (pyarrow, pandas); `aiinfra --help` must not pay for them.
    from aiinfra.platform import connect, open_local

    if cluster_running(config):
        return connect(config)
    return open_local(config)


def stage_log() -> Any:
    return StageLog(total=0, out=sys.stderr)  # the pipeline sets how many stages it runs
