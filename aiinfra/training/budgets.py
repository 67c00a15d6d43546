"""How much memory a training job's driver will hold, said before the job is sent.

A Ray job's driver runs wherever its entrypoint resources fit, on the head node when it asks for none (16 GiB on
clusters/aws.yaml's head, 8 GiB on the KubeRay head). One that outgrows its node is killed halfway through, by the
OOM killer, with little said. ``aiinfra train --submit`` estimates the driver's peak from the dataset version's
manifest (rows, column types, the profile's top values for text) and, where ``jobs.entrypoint_memory_bytes`` sets a
budget, refuses a job whose estimate exceeds it, saying what to change. Without a budget the job asks for its
estimate as ``entrypoint_memory``, so Ray starts its driver only on a node with that much memory left for tasks, and
a job that no node could hold is refused before it is sent (it would wait, PENDING, for ever).

The estimate, per engine (``data.engine``):
- ``memory``: the table about four times over at its peak (the Arrow read, the pandas frame, the split's copies and
  the transformed arrays), and the feature view's source, read whole for the point-in-time join, twice.
- ``ray``: the merged statistics (small) and the holdout rows, which the driver evaluates the model on.
Both add the process itself (Python with torch, pandas and Ray imported: 0.53 GiB resident measured in
benchmarks/training_table.py). It is an estimate for a refusal, not a reservation: within a factor of two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiinfra.errors import InvalidInput

__all__ = ["RAY_ENGINE_ROWS", "DriverEstimate", "check_driver_budget", "driver_memory_request", "retrain_driver_estimate",
           "row_bytes", "training_driver_estimate", "use_ray_engine"]

RAY_ENGINE_ROWS = 2_000_000  # data.engine: auto builds larger tables on Ray Data

PROCESS_BYTES = 600 << 20
MEMORY_ENGINE_COPIES = 4
_FIXED = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "float": 4,
          "date32[day]": 8}
_PY_STR = 57  # a pandas object column's 8-byte pointer and a short str object's header (sys.getsizeof("") = 49)


@dataclass(frozen=True)
class DriverEstimate:
    bytes: int
    engine: str
    detail: str

    def __str__(self) -> str:
        return f"about {_gib(self.bytes)} ({self.detail})"


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def row_bytes(version: Any) -> float:
    """A row of ``version`` as pandas holds it: 8 bytes a number or timestamp, a Python object a text value
    (its length taken from the profile's most frequent values)."""
    profile = version.profile.columns if version.profile is not None else {}
    total = 0.0
    for column in version.schema_:
        t = column["type"]
        if t.startswith(("string", "large_string")):
            top = getattr(profile.get(column["name"]), "top", None) or []
            seen = sum(n for _, n in top)
            mean_len = sum(len(str(v)) * n for v, n in top) / seen if seen else 16.0
            total += _PY_STR + mean_len
        else:
            total += _FIXED.get(t, 8)
    return total


def use_ray_engine(engine: str, version: Any, source_rows: int = 0) -> bool:
    """``data.engine``: ``auto`` builds the table on Ray Data from ``RAY_ENGINE_ROWS`` rows of the version, or of
    the feature view's source (which the in-memory join loads whole), up."""
    return engine == "ray" or (engine == "auto" and max(version.row_count or 0, source_rows) >= RAY_ENGINE_ROWS)


def training_driver_estimate(cfg: Any, version: Any, *, source: Any = None, engine: str) -> DriverEstimate:
    """The driver's peak for training ``cfg`` on ``version``; ``source``: the feature view's source version (the
    in-memory join reads it whole); ``engine``: ``memory`` or ``ray``, as ``use_ray_engine`` decides."""
    rows = version.row_count or 0
    table = rows * row_bytes(version)
    if engine == "ray":
        holdout = table * cfg.data.split.holdout_fraction
        return DriverEstimate(int(PROCESS_BYTES + 2 * holdout), "ray",
                              f"the Ray Data engine: the process and the {cfg.data.split.holdout_fraction:.0%} holdout of "
                              f"{rows:,} rows")
    joined = 2 * (source.row_count or 0) * row_bytes(source) if source is not None else 0.0
    detail = f"the in-memory engine: {MEMORY_ENGINE_COPIES} copies of {rows:,} rows of {row_bytes(version):.0f} bytes"
    if source is not None:
        detail += f", and the feature source's {source.row_count or 0:,} rows for the join"
    return DriverEstimate(int(PROCESS_BYTES + MEMORY_ENGINE_COPIES * table + joined), "memory", detail)


def retrain_driver_estimate(cfg: Any, base: Any, *, recent_rows: int, reference_rows: int | None, source: Any = None,
                            engine: str) -> DriverEstimate:
    """The peak of ``aiinfra retrain`` (aiinfra/pipelines/retrain.py) on ``base``, the training dataset's latest version:
    it reads the whole version into one frame and sorts it (two copies, kept while it trains), then trains on a
    window of ``reference_rows`` of it (all, when None) plus up to ``recent_rows`` production rows, as
    ``training_driver_estimate`` says for that many rows."""
    base_rows = base.row_count or 0
    window_rows = (base_rows if reference_rows is None else min(reference_rows, base_rows)) + recent_rows
    window = _WithRows(base, window_rows)
    training = training_driver_estimate(cfg, window, source=source, engine=engine)
    held = 2 * base_rows * row_bytes(base)
    return DriverEstimate(int(training.bytes + held), training.engine,
                          f"{base_rows:,} rows of {getattr(base, 'ref', 'the dataset')} read and sorted, then training on "
                          f"a window of {window_rows:,}: {training.detail}")


class _WithRows:
    """A version's manifest with another row count: what the retrain's window will look like."""

    def __init__(self, version: Any, rows: int) -> None:
        self.schema_, self.profile, self.row_count = version.schema_, version.profile, rows


def check_driver_budget(estimate: DriverEstimate, budget_bytes: int, what: str) -> None:
    """Raise InvalidInput when ``estimate`` exceeds ``budget_bytes`` (0: no budget, nothing to check)."""
    if not budget_bytes or estimate.bytes <= budget_bytes:
        return
    advice = ("set data.engine: ray in the training config (the table is then built on Ray Data and the driver "
              "holds statistics), or raise jobs.entrypoint_memory_bytes") if estimate.engine == "memory" else (
        "raise jobs.entrypoint_memory_bytes, or lower data.split.holdout_fraction")
    raise InvalidInput(f"{what}: its driver would hold {estimate}, more than its budget of {_gib(budget_bytes)} "
                       f"(jobs.entrypoint_memory_bytes); {advice}")


def driver_memory_request(estimate: DriverEstimate | None, budget_bytes: int, node_memory: list[int], what: str) -> int | None:
    """The ``entrypoint_memory`` a job asks for when ``jobs.entrypoint_memory_bytes`` is unset: its estimate.

    None where a budget is configured (the job asks for that), where there is no estimate, or where the cluster's
    nodes are not known. ``node_memory``: each alive node's memory for tasks (Ray's ``memory`` resource).

    Raises:
        InvalidInput: the estimate is more than any node has: Ray would never start the driver.
    """
    if budget_bytes or estimate is None or not node_memory:
        return None
    largest = max(node_memory)
    if estimate.bytes > largest:
        advice = ("set data.engine: ray in the training config (the driver then holds statistics)"
                  if estimate.engine == "memory" else "lower data.split.holdout_fraction")
        raise InvalidInput(f"{what}: its driver would hold {estimate}, more than any node of the cluster has for tasks "
                           f"(the largest: {_gib(largest)}); {advice}, add a larger node, or set "
                           "jobs.entrypoint_memory_bytes to choose the budget yourself")
    return estimate.bytes
