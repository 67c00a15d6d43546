"""Experiment tracking: training runs, Tune sweeps and their trials, per-epoch metrics.

A plain class over a MetadataDB, like ``registry.core.ModelRegistry``, and meant to live
beside it in the registry actor (same DB, its own schema component ``runs``). No Ray here.

Every call that writes is safe to retry, because Ray retries tasks and actor calls:
starting a run that exists returns it, finishing a run twice with the same status is a
no-op, and epochs are upserted by ``(run_id, step)`` so a resumed run never duplicates one.
Metric values are stored as finite floats only: NaN, infinities and non-numbers are dropped,
so a diverged loss never makes a run unrecordable.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from aiinfra.errors import Conflict, InvalidInput, NotFound
from aiinfra.redaction import redact_text, redact_uri
from aiinfra.registry.types import validate_name
from aiinfra.storage import MetadataDB, Migration
from aiinfra.storage.metadata import Transaction

__all__ = ["COMPONENT", "MIGRATIONS", "Run", "RunEpoch", "RunKind", "RunStatus", "RunStore"]

RunStatus = Literal["running", "finished", "failed", "stopped"]  # stopped: ended early by a scheduler
RunKind = Literal["train", "tune", "trial", "reproduce"]

_STATUSES: tuple[str, ...] = get_args(RunStatus)
_KINDS: tuple[str, ...] = get_args(RunKind)
_EPOCH_KEYS = ("epoch", "step")
MIN_PREFIX = 4
MAX_LIST = 10_000

COMPONENT = "runs"

MIGRATIONS = (
    Migration(
        1,
        (
            """CREATE TABLE runs (
                run_id TEXT PRIMARY KEY,
                experiment TEXT NOT NULL,
                kind TEXT NOT NULL,
                status TEXT NOT NULL,
                parent_run_id TEXT REFERENCES runs(run_id),
                started_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION,
                created_by TEXT NOT NULL,
                params TEXT NOT NULL,
                config_hash TEXT,
                seed BIGINT,
                dataset_versions TEXT NOT NULL,
                code_version TEXT NOT NULL,
                metrics TEXT NOT NULL,
                artifacts TEXT NOT NULL,
                cpu_seconds DOUBLE PRECISION,
                gpu_seconds DOUBLE PRECISION,
                error TEXT
            )""",
            "CREATE INDEX runs_experiment ON runs (experiment, started_at)",
            "CREATE INDEX runs_parent ON runs (parent_run_id)",
            """CREATE TABLE run_epochs (
                run_id TEXT NOT NULL REFERENCES runs(run_id),
                step INTEGER NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                metrics TEXT NOT NULL,
                PRIMARY KEY (run_id, step)
            )""",
        ),
    ),
)


class RunEpoch(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: int
    ts: float
    metrics: dict[str, float]


class Run(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    experiment: str
    kind: RunKind
    status: RunStatus
    parent_run_id: str | None = None
    started_at: float
    ended_at: float | None = None
    created_by: str
    params: dict[str, Any] = Field(default_factory=dict)
    config_hash: str | None = None
    seed: int | None = None
    dataset_versions: list[str] = Field(default_factory=list)
    code_version: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)  # final metrics
    artifacts: dict[str, str] = Field(default_factory=dict)  # name -> URI or store key
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None
    error: str | None = None
    epochs: list[RunEpoch] = Field(default_factory=list)  # filled by get_run, empty in listings

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


# -- value coercion -------------------------------------------------------------------------
def _scalar(value: Any) -> Any:
    """numpy scalars, 0-d arrays and one-element tensors -> the Python value; others unchanged."""
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def _number(value: Any) -> float | None:
    """A finite float, or None for anything that is not one (strings, bools, NaN, inf, arrays)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _metrics(values: Mapping[str, Any] | None, skip: tuple[str, ...] = ()) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (values or {}).items():
        if key in skip:
            continue
        number = _number(value)
        if number is not None and str(key):
            out[str(key)] = number
    return out


def _json_ready(value: Any) -> Any:
    """Make a value JSON-friendly: numpy scalars to Python, containers recursively, NaN/inf as strings."""
    value = _scalar(value)
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_json_ready(v) for v in items]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json(value: Any) -> str:
    return json.dumps(_json_ready(value), sort_keys=True, default=str)


def _optional_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    number = _number(value)
    if number is None or number < 0:
        raise InvalidInput(f"{name} must be a non-negative finite number, got {value!r}")
    return number


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _side_by_side(a: Any, b: Any) -> dict[str, Any]:
    return {"a": a, "b": b, "same": a == b}


class RunStore:
    """Runs, their per-epoch metrics, and comparisons between runs.

    Args:
        db: the metadata DB; this class owns the tables created by ``MIGRATIONS``.
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(self, db: MetadataDB, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.ensure_schema(COMPONENT, MIGRATIONS)

    # -- writes ------------------------------------------------------------------------
    def start_run(
        self,
        *,
        experiment: str,
        kind: RunKind = "train",
        run_id: str | None = None,
        params: dict[str, Any] | None = None,
        config_hash: str | None = None,
        seed: int | None = None,
        dataset_versions: list[str] | None = None,
        code_version: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
        who: str = "unknown",
        started_at: float | None = None,
    ) -> Run:
        """Record a run as ``running``.

        Idempotent by ``run_id``: starting a run that exists returns it as stored (a retried
        call), unless it belongs to another experiment or kind, which is a ``Conflict``.

        Raises:
            InvalidInput: a bad experiment name, run id, kind, seed or field type.
            NotFound: ``parent_run_id`` names no run.
            Conflict: ``run_id`` exists with another experiment or kind.
        """
        validate_name("experiment name", experiment)
        if kind not in _KINDS:
            raise InvalidInput(f"run kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        run_id = f"run-{uuid.uuid4().hex[:12]}" if run_id is None else validate_name("run id", run_id)
        if parent_run_id is not None:
            validate_name("parent run id", parent_run_id)
        if params is not None and not isinstance(params, Mapping):
            raise InvalidInput(f"params must be a mapping, got {type(params).__name__}")
        if code_version is not None and not isinstance(code_version, Mapping):
            raise InvalidInput(f"code_version must be a mapping, got {type(code_version).__name__}")
        if config_hash is not None and not isinstance(config_hash, str):
            raise InvalidInput(f"config_hash must be a string, got {type(config_hash).__name__}")
        seed = _scalar(seed)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63):
            raise InvalidInput(f"seed must be a 64-bit integer, got {seed!r}")
        if isinstance(dataset_versions, str) or not isinstance(dataset_versions, (Sequence, type(None))):
            raise InvalidInput("dataset_versions must be a list of dataset version ids")
        datasets = [str(d) for d in dataset_versions or []]
        params_json = _json(params or {})
        code_json = _json(code_version or {})

        now = float(started_at) if started_at is not None else self._clock()
        with self.db.transaction() as tx:
            existing = tx.query("SELECT experiment, kind FROM runs WHERE run_id = ?", (run_id,))
            if existing:
                if (existing[0]["experiment"], existing[0]["kind"]) != (experiment, kind):
                    raise Conflict(
                        f"run {run_id!r} already exists in experiment {existing[0]['experiment']!r} as a "
                        f"{existing[0]['kind']!r} run; use another run id"
                    )
                return self._load(tx, run_id, epochs=True)
            if parent_run_id is not None and not tx.query("SELECT 1 FROM runs WHERE run_id = ?", (parent_run_id,)):
                raise NotFound(f"parent run {parent_run_id!r} does not exist; start the parent run first")
            tx.execute(
                """INSERT INTO runs (run_id, experiment, kind, status, parent_run_id, started_at, ended_at,
                    created_by, params, config_hash, seed, dataset_versions, code_version, metrics, artifacts,
                    cpu_seconds, gpu_seconds, error)
                   VALUES (?, ?, ?, 'running', ?, ?, NULL, ?, ?, ?, ?, ?, ?, '{}', '{}', NULL, NULL, NULL)""",
                (run_id, experiment, kind, parent_run_id, now, who, params_json, config_hash, seed,
                 _json(datasets), code_json),
            )
            return self._load(tx, run_id, epochs=False)

    def log_epochs(self, run_id: str, epochs: Sequence[Mapping[str, Any]]) -> int:
        """Upsert per-epoch metrics; returns how many (run, step) rows were written.

        Each mapping has the step under ``"epoch"`` (or ``"step"``) and metric values beside
        it. Non-numeric values, NaN and infinities are dropped. A step logged again (a retry
        or a resumed run) replaces the earlier row; within one call the last entry wins.

        Raises:
            NotFound: no run ``run_id``.
            InvalidInput: an entry without an integer ``epoch``.
        """
        if isinstance(epochs, Mapping) or isinstance(epochs, str):
            raise InvalidInput("epochs must be a sequence of mappings, one per epoch")
        rows: dict[int, dict[str, float]] = {}
        for i, entry in enumerate(epochs):
            if not isinstance(entry, Mapping):
                raise InvalidInput(f"epoch entry {i} must be a mapping, got {type(entry).__name__}")
            key = next((k for k in _EPOCH_KEYS if k in entry), None)
            step = _scalar(entry[key]) if key is not None else None
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise InvalidInput(f"epoch entry {i} needs a non-negative integer 'epoch', got {step!r}")
            rows[step] = _metrics(entry, skip=_EPOCH_KEYS)
        now = self._clock()
        with self.db.transaction() as tx:
            self._require(tx, run_id)
            for step, metrics in rows.items():
                tx.execute(
                    "INSERT INTO run_epochs (run_id, step, ts, metrics) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run_id, step) DO UPDATE SET ts = excluded.ts, metrics = excluded.metrics",
                    (run_id, step, now, _json(metrics)),
                )
        return len(rows)

    def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        metrics: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
        cpu_seconds: float | None = None,
        gpu_seconds: float | None = None,
        error: str | None = None,
        ended_at: float | None = None,
    ) -> Run:
        """End a run with a terminal status, its final metrics, artifacts and resource use.

        Idempotent: finishing a run again with the status it already has returns it as stored.

        Raises:
            InvalidInput: ``status`` is ``running`` or unknown, or a bad field.
            NotFound: no run ``run_id``.
            Conflict: the run already ended with another status.
        """
        if status not in _STATUSES or status == "running":
            terminal = ", ".join(s for s in _STATUSES if s != "running")
            raise InvalidInput(f"a run finishes as one of {terminal}, got {status!r}")
        if artifacts is not None and not isinstance(artifacts, Mapping):
            raise InvalidInput(f"artifacts must be a mapping of name to URI, got {type(artifacts).__name__}")
        # A run's error text and artifact URIs are stored and shown: no credential in either.
        artifacts_ = {str(k): redact_uri(str(v)) for k, v in (artifacts or {}).items()}
        metrics_ = _metrics(metrics)
        cpu = _optional_seconds("cpu_seconds", cpu_seconds)
        gpu = _optional_seconds("gpu_seconds", gpu_seconds)
        now = float(ended_at) if ended_at is not None else self._clock()
        with self.db.transaction() as tx:
            current = self._load(tx, run_id, epochs=False)
            if current.status != "running":
                if current.status == status:
                    return self._load(tx, run_id, epochs=True)
                raise Conflict(
                    f"run {run_id!r} already ended as {current.status!r}; it cannot be finished again as {status!r}"
                )
            tx.execute(
                """UPDATE runs SET status = ?, ended_at = ?, metrics = ?, artifacts = ?, cpu_seconds = ?,
                    gpu_seconds = ?, error = ? WHERE run_id = ?""",
                (status, now, _json(metrics_), _json(artifacts_), cpu, gpu,
                 None if error is None else redact_text(str(error)), run_id),
            )
            return self._load(tx, run_id, epochs=True)

    # -- reads -------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run:
        """A run with its epochs, by exact id or a unique prefix of at least 4 characters.

        A prefix without the ``run-`` of generated ids is tried with it too, so ``3fa2`` finds
        ``run-3fa2...``.

        Raises:
            NotFound: nothing matches. Conflict: the prefix matches several runs.
        """
        return self._load(self.db, self._resolve(run_id), epochs=True)

    def list_runs(
        self,
        *,
        experiment: str | None = None,
        parent_run_id: str | None = None,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs matching every given filter, newest first, without their epochs."""
        if status is not None and status not in _STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
        if kind is not None and kind not in _KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIST:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIST}, got {limit!r}")
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("experiment", experiment), ("parent_run_id", parent_run_id),
                              ("status", status), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id DESC LIMIT ?"
        return [self._row_to_run(r, []) for r in self.db.query(sql, (*args, limit))]

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Two runs side by side: params (nested dicts flattened to dotted keys), final metrics
        with ``delta = b - a``, datasets, code version, config hash and seed."""
        ra, rb = self.get_run(a), self.get_run(b)
        pa, pb = _flatten(ra.params), _flatten(rb.params)
        params = {k: _side_by_side(pa.get(k), pb.get(k)) for k in sorted(pa.keys() | pb.keys())}
        metrics: dict[str, Any] = {}
        for k in sorted(ra.metrics.keys() | rb.metrics.keys()):
            ma, mb = ra.metrics.get(k), rb.metrics.get(k)
            metrics[k] = {"a": ma, "b": mb, "delta": None if ma is None or mb is None else mb - ma}
        return {
            "runs": [ra.run_id, rb.run_id],
            "params": params,
            "metrics": metrics,
            "dataset_versions": _side_by_side(ra.dataset_versions, rb.dataset_versions),
            "code_version": _side_by_side(ra.code_version, rb.code_version),
            "config_hash": _side_by_side(ra.config_hash, rb.config_hash),
            "seed": _side_by_side(ra.seed, rb.seed),
        }

    # -- helpers -----------------------------------------------------------------------
    def _resolve(self, run_id: str) -> str:
        if not isinstance(run_id, str) or not run_id:
            raise InvalidInput(f"run id must be a non-empty string, got {run_id!r}")
        if self.db.query("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
            return run_id
        if len(run_id) < MIN_PREFIX:
            raise NotFound(f"no run {run_id!r} (a run id prefix needs at least {MIN_PREFIX} characters)")
        prefixes = [run_id] if run_id.startswith("run-") else [run_id, f"run-{run_id}"]
        for prefix in prefixes:
            # substr, not LIKE: run ids may hold '_', which LIKE reads as a wildcard.
            rows = self.db.query(
                "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id LIMIT 6",
                (len(prefix), prefix),
            )
            ids = [str(r["run_id"]) for r in rows]
            if len(ids) == 1:
                return ids[0]
            # A run and its trials ("<run>-<trial>") share a prefix: the run itself is meant.
            if ids and all(i.startswith(f"{ids[0]}-") for i in ids[1:]):
                return ids[0]
            if rows:
                shown = ", ".join(r["run_id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
                raise Conflict(f"run id prefix {run_id!r} is ambiguous: it matches {shown}; give more characters")
        raise NotFound(f"no run {run_id!r}; `list_runs` shows the runs of an experiment")

    @staticmethod
    def _require(q: MetadataDB | Transaction, run_id: str) -> None:
        if not q.query("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
            raise NotFound(f"no run {run_id!r}; start it with start_run first")

    def _load(self, q: MetadataDB | Transaction, run_id: str, *, epochs: bool) -> Run:
        rows = q.query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise NotFound(f"no run {run_id!r}")
        history: list[RunEpoch] = []
        if epochs:
            history = [
                RunEpoch(step=int(e["step"]), ts=e["ts"], metrics=json.loads(e["metrics"]))
                for e in q.query("SELECT step, ts, metrics FROM run_epochs WHERE run_id = ? ORDER BY step", (run_id,))
            ]
        return self._row_to_run(rows[0], history)

    @staticmethod
    def _row_to_run(row: dict[str, Any], epochs: list[RunEpoch]) -> Run:
        return Run(
            run_id=row["run_id"],
            experiment=row["experiment"],
            kind=row["kind"],
            status=row["status"],
            parent_run_id=row["parent_run_id"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            created_by=row["created_by"],
            params=json.loads(row["params"]),
            config_hash=row["config_hash"],
            seed=row["seed"],
            dataset_versions=json.loads(row["dataset_versions"]),
            code_version=json.loads(row["code_version"]),
            metrics=json.loads(row["metrics"]),
            artifacts=json.loads(row["artifacts"]),
            cpu_seconds=row["cpu_seconds"],
            gpu_seconds=row["gpu_seconds"],
            error=row["error"],
            epochs=epochs,
        )
