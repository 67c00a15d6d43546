"""PlatformConfig: one pydantic model, passed explicitly to whatever needs it.

Read order (later wins): built-in defaults, the YAML file named by ``AIINFRA_CONFIG``,
environment overrides, and in a Ray job that aiinfra submitted, the submitter's config
(``AIINFRA_SUBMITTED_CONFIG``). Defaults need no file at all: storage and the SQLite metadata DB
live under ``AIINFRA_HOME`` (``./.aiinfra``).

Environment variables are declared once below and read at call time, never at import,
so tests and Ray workers see the environment they actually run in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aiinfra.errors import InvalidInput

__all__ = [
    "BatchSettings", "ENV", "EnvVar", "JobSettings", "MetadataSettings", "MonitoringSettings", "PlatformConfig", "PostgresMetadata", "SQLiteMetadata",
    "ServeSettings", "load_config", "local_state_problem", "read_yaml", "validate_as",
]


@dataclass(frozen=True)
class EnvVar:
    """An environment variable the platform reads; ``get`` reads it now, not at import."""

    name: str
    doc: str
    default: str | None = None

    def get(self, environ: Mapping[str, str] | None = None) -> str | None:
        value = (os.environ if environ is None else environ).get(self.name)
        return value if value not in (None, "") else self.default


class _Env:
    HOME = EnvVar("AIINFRA_HOME", "storage root of the embedded default", "./.aiinfra")
    CONFIG = EnvVar("AIINFRA_CONFIG", "path of a PlatformConfig YAML file")
    # Set by aiinfra.jobs.submit in a job's runtime_env: the submitter's whole validated config, so the job
    # runs with exactly the settings its submitter had, config file and environment included.
    SUBMITTED_CONFIG = EnvVar("AIINFRA_SUBMITTED_CONFIG", "a PlatformConfig as JSON, shipped with a Ray job")
    STORAGE_ROOT = EnvVar("AIINFRA_STORAGE_ROOT", "artifact storage URI (local path, s3://, gs://)")
    METADATA_URL = EnvVar("AIINFRA_METADATA_URL", "metadata DB URL (sqlite:///..., postgresql://...)")
    METADATA_URL_FILE = EnvVar("AIINFRA_METADATA_URL_FILE",
                               "a file holding the metadata DB URL (a mounted secret); read when AIINFRA_METADATA_URL is unset")
    RAY_ADDRESS = EnvVar("RAY_ADDRESS", "join this Ray cluster instead of starting a local one")
    API_TOKEN = EnvVar("AIINFRA_API_TOKEN", "bearer token a client sends to the HTTP API")
    SERVE_PORT = EnvVar("AIINFRA_SERVE_PORT", "HTTP port of Ray Serve")
    SERVE_GRPC_PORT = EnvVar("AIINFRA_SERVE_GRPC_PORT", "port of Ray Serve's gRPC proxy (OIP v2 over gRPC); unset: off")
    SHARED_LOCAL_STATE = EnvVar("AIINFRA_SHARED_LOCAL_STATE",
                                "1: every node mounts the same AIINFRA_HOME (one machine, NFS), so local state is shared")


ENV = _Env()
M = TypeVar("M", bound=BaseModel)


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # The Open Inference Protocol over gRPC (KServe's and Triton's GRPCInferenceService) on this port, through
    # Serve's gRPC proxy; None: no gRPC server. Off by default because Serve's gRPC proxy listens on every
    # interface (it has no host setting): open it where the network allows it (every call needs a token).
    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    request_timeout_s: float = Field(default=30.0, gt=0)
    # While a model has a `challenger` alias, this share of its requests (by a hash of the request id)
    # is answered by the challenger: the canary. 0 turns canaries off.
    canary_share: float = Field(default=0.1, ge=0.0, le=0.5)
    # While a model has a `shadow` alias, this share of its requests is mirrored to that version: its
    # answers are compared with the served ones (agreement in `aiinfra serve status`), never returned.
    shadow_share: float = Field(default=1.0, ge=0.0, le=1.0)
    # Replicas of the model deployment. min == max: a fixed count (the embedded default, on a small
    # machine); max > min: Serve's autoscaler keeps about target_ongoing_requests in flight per replica.
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=4.0, gt=0)
    max_ongoing_requests: int = Field(default=16, ge=1)
    max_queued_requests: int = Field(default=64, ge=1, description="past this, callers get 503 at once")
    # Ray Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1) for clusters the platform starts itself (the
    # embedded default, `aiinfra up`): about 2.5x the default proxy's throughput here and a fifth of its
    # added latency (BENCHMARKS.md). A cluster started otherwise keeps whatever its environment says.
    haproxy: bool = True
    # How the router reaches the model deployments: "grpc" is Serve's by-value transport between replicas
    # (pickled arguments over the replica's own gRPC server), 0.5 to 2 ms less per request here than "actor",
    # Ray's actor-call transport through the object store (BENCHMARKS.md). "actor" is there should a
    # request or answer ever hold something only cloudpickle can carry.
    model_transport: Literal["grpc", "actor"] = "grpc"
    # Calls a router replica keeps in flight to one model version's deployment: requests that come while that
    # many are out wait and go together in the next call, so the hop's fixed cost (about 2 ms here) is paid
    # once per call, not per request (each request still fails or succeeds alone). 0 sends every request on
    # its own call.
    model_calls_in_flight: int = Field(default=2, ge=0)
    # The champion answered in the router's own process, without the hop to a model deployment: here about
    # 2 ms less per request and twice the throughput (BENCHMARKS.md), for models that run well on the
    # router's CPU share (the tabular families). The challenger and shadow keep their deployments; the
    # router's replicas (min/max_replicas) carry the load. Set it false for models heavy enough that batching
    # pays: the champion then gets its own ModelVersions deployment, with @serve.batch and its own
    # autoscaling.
    champion_in_router: bool = True
    # GPUs per replica of each model deployment (champion, challenger, shadow); above 0 their models run on
    # CUDA. The router has no GPU, so this needs champion_in_router: false.
    model_gpus: float = Field(default=0.0, ge=0.0)
    # Model versions one replica keeps loaded, over all the models an endpoint serves (the router's, for
    # champions answered there, and each model deployment's, as Serve's @serve.multiplexed bound): the
    # least recently used is unloaded past it, and loaded again (download hash-checked) when next asked.
    # At least 2, so the old and the new version of a model both answer while its alias moves.
    max_models_per_replica: int = Field(default=8, ge=2)
    # FastAPI's docs routes (/docs, /redoc, /openapi.json): off by default, as they answer without a token.
    docs: bool = False


class JobSettings(BaseModel):
    """What the drivers of the Ray jobs aiinfra submits (train --submit, the autopilot's retrains) ask for.

    A job's driver runs where its entrypoint resources fit; with none it may land on the head node, and
    every job's driver with it. On a cluster whose head runs no work (clusters/), ask for a little CPU or
    a custom resource the worker nodes advertise, so drivers spread over the workers. The embedded default
    asks for nothing: on a 2-CPU machine a driver's CPU would be one the training workers lack.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    entrypoint_num_cpus: float = Field(default=0.0, ge=0.0)
    entrypoint_memory_bytes: int = Field(default=0, ge=0)
    entrypoint_resources: dict[str, float] = Field(default_factory=dict)


class BatchSettings(BaseModel):
    """Batch inference (``aiinfra predict``, jobs/batch_predict.py): Ray Data streams a dataset version's files
    through a pool of scoring actors, each holding the model once.

    The pool autoscales between ``min_actors`` and ``max_actors``: Ray Data adds an actor while batches wait
    and every actor is busy, and stops at what the cluster can place (on an autoscaling cluster, pending actors
    ask the autoscaler for nodes). ``max_actors`` unset: as many as the cluster's CPUs hold at ``actor_cpus``
    each, counted when the job starts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_actors: int = Field(default=1, ge=1)
    max_actors: int | None = Field(default=None, ge=1)
    # Half a CPU: the embedded default's 2 CPUs also hold Serve (about 0.7) and the reads (a quarter each).
    actor_cpus: float = Field(default=0.5, gt=0.0)
    # A batch is also one Parquet file of the output version: ingestion's batch size, not a request's.
    batch_rows: int = Field(default=65_536, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _bounds(self) -> BatchSettings:
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) is below min_actors ({self.min_actors})")
        return self

    def pool_bounds(self, cluster_cpus: float) -> tuple[int, int]:
        """(min, max) actors for a cluster of ``cluster_cpus`` CPUs."""
        top = self.max_actors if self.max_actors is not None else int(cluster_cpus // self.actor_cpus)
        return self.min_actors, max(self.min_actors, top)


class MonitoringSettings(BaseModel):
    """How served traffic reaches the drift monitors (``monitor:<model>`` actors), and how each
    monitor cuts windows and tests them (``aiinfra.monitoring.core.DriftMonitor`` takes this model).

    A window closes at ``window_rows`` rows or ``window_seconds`` after its first row (None: by
    count only); one with fewer than ``min_rows`` rows is stored as skipped, not tested. With
    ``min_window_seconds``, a window that fills sooner stays open until then, holding a uniform sample
    of ``window_rows`` of the rows that arrived meanwhile: above ``window_rows / min_window_seconds`` rows a
    second the monitor tests one window per ``min_window_seconds`` on the same number of rows, so its CPU
    stops growing with the traffic (a check costs about 30 ms on 1,000 x 20, see BENCHMARKS.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0, description="share of requests sent to the monitor")
    window_rows: int = Field(default=1000, ge=10)
    window_seconds: float | None = Field(default=3600.0, gt=0)
    # 0: a window closes the moment it holds window_rows rows, however fast they came (one check per
    # window_rows rows). For production traffic set it to a few seconds: see the class docstring.
    min_window_seconds: float = Field(default=0.0, ge=0.0)
    min_rows: int = Field(default=100, ge=2, description="capped to window_rows")
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    correction: Literal["bonferroni", "fdr"] = "bonferroni"
    # Where the per-feature statistics come from. "scipy" (the default) is licence-clean; "alibi" runs them
    # through alibi-detect, which is under the Business Source License 1.1 since 0.11.5 (free for
    # non-production use only): opt in only with a licence from Seldon, and `pip install 'aiinfra[alibi]'`.
    detector: Literal["scipy", "alibi"] = "scipy"
    # The multivariate test (MMD on all inputs together) besides the per-feature ones.
    multivariate: bool = True
    # The most of any drift window, and of the labelled rows a retrain learns from, that one API token's
    # requests may make up: with many clients, no single one can make a window drift (or a retrain learn
    # its labels) by itself. 1.0: no limit, for deployments where one client sends all the traffic.
    max_token_share: float = Field(default=1.0, gt=0.0, le=1.0)
    # Above one actor's intake, the monitor of a model runs as this many actors: each joins the predictions
    # and labels of the requests whose id hashes to it, and hands what the joins produce to the first,
    # which also cuts the drift windows from every sampled row (see aiinfra.monitoring.shards).
    shards: int = Field(default=1, ge=1, le=32)

    @model_validator(mode="after")
    def _cap_min_rows(self) -> MonitoringSettings:
        # A min_rows above window_rows would skip every full window: small windows are tested whole instead.
        if self.min_rows > self.window_rows:
            object.__setattr__(self, "min_rows", self.window_rows)
        if self.window_seconds is not None and self.min_window_seconds > self.window_seconds:
            raise ValueError(f"min_window_seconds ({self.min_window_seconds:g}) is above window_seconds "
                             f"({self.window_seconds:g}): no window could stay open that long")
        return self


class SQLiteMetadata(BaseModel):
    """The embedded default: one SQLite file (``$AIINFRA_HOME/metadata.db``). One node only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["sqlite"] = "sqlite"
    path: Path | None = None  # default: metadata.db in the home directory


class PostgresMetadata(BaseModel):
    """A Postgres database: what any cluster of more than one node needs.

    Put the password in the environment (``AIINFRA_METADATA_URL``, from a secret), not in a committed file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["postgresql"] = "postgresql"
    url: str = Field(repr=False, description="postgresql://USER:PASSWORD@HOST:PORT/DB")

    @model_validator(mode="after")
    def _is_postgres(self) -> PostgresMetadata:
        if self.url.split("://", 1)[0].split("+", 1)[0] not in ("postgresql", "postgres"):
            raise ValueError("url must be a postgresql:// URL, e.g. postgresql://USER:PASSWORD@HOST:5432/DB")
        return self


MetadataSettings = Annotated[SQLiteMetadata | PostgresMetadata, Field(discriminator="type")]


def _metadata_from_url(url: str) -> SQLiteMetadata | PostgresMetadata:
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        return SQLiteMetadata(path=Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None)
    if scheme in ("postgresql", "postgres"):
        return PostgresMetadata(url=url)
    raise ValueError("metadata_url must be sqlite:////ABSOLUTE/PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DB")


class PlatformConfig(BaseModel):
    """Where the platform keeps its state and how it reaches Ray.

    After validation every location is concrete and absolute, so the config means the same
    thing in the driver, in an actor and in a Ray job whose working directory differs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Path("./.aiinfra")
    storage_root: str | None = Field(default=None, repr=False)  # may carry credentials: kept out of the repr
    # The metadata DB, typed (``metadata: {type: postgresql, url: ...}``), or as one URL (``metadata_url``,
    # ``AIINFRA_METADATA_URL``), which wins where both are given. After validation both say the same.
    metadata: MetadataSettings | None = None
    metadata_url: str | None = Field(default=None, repr=False)
    ray_address: str | None = None
    # A cluster of more than one node refuses local state (a SQLite file, a local storage root): each node
    # would see its own, empty copy. True says every node mounts the same file system there (one machine
    # running several Ray nodes, or an NFS home), so local state is shared after all.
    shared_local_state: bool = False
    namespace: str = "aiinfra"
    serve: ServeSettings = ServeSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    jobs: JobSettings = JobSettings()
    batch: BatchSettings = BatchSettings()

    @model_validator(mode="after")
    def _resolve(self) -> PlatformConfig:
        home = self.home.expanduser().resolve()
        object.__setattr__(self, "home", home)
        if self.storage_root is None:
            object.__setattr__(self, "storage_root", str(home))
        elif "://" not in self.storage_root:
            object.__setattr__(self, "storage_root", str(Path(self.storage_root).expanduser().resolve()))
        metadata = (_metadata_from_url(self.metadata_url) if self.metadata_url
                    else self.metadata if self.metadata is not None else SQLiteMetadata())
        if isinstance(metadata, SQLiteMetadata):
            path = metadata.path.expanduser() if metadata.path is not None else home / "metadata.db"
            path = path if path.is_absolute() else (home / path if self.metadata_url is None else path.resolve())
            metadata = SQLiteMetadata(path=path.resolve())
            url = f"sqlite:///{metadata.path}"
        else:
            url = metadata.url
        object.__setattr__(self, "metadata", metadata)
        object.__setattr__(self, "metadata_url", url)
        return self

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def token_file(self) -> Path:
        return self.home / "api_token"


def local_state_problem(config: PlatformConfig, nodes: int) -> str | None:
    """Why ``config`` cannot serve a cluster of ``nodes`` nodes (None when it can): node-local state.

    A SQLite file or a local storage root is on one node's disk; on a cluster of several machines every
    other node would open a new, empty copy without saying so.
    """
    if nodes <= 1 or config.shared_local_state:
        return None
    local = []
    if config.metadata_url.startswith("sqlite:"):
        local.append(f"its metadata DB is a SQLite file ({config.metadata_url}): configure "
                     "`metadata: {type: postgresql, url: ...}` or AIINFRA_METADATA_URL=postgresql://...")
    if "://" not in config.storage_root or config.storage_root.startswith("file://"):
        local.append(f"its storage root is a local path ({config.storage_root}): configure `storage_root: s3://BUCKET/PREFIX`"
                     " (or gs://), or AIINFRA_STORAGE_ROOT")
    if not local:
        return None
    return (f"this Ray cluster has {nodes} nodes, but the platform's state is on one node's disk: "
            + "; and ".join(local) + ". If every node mounts the same file system there, set "
            "shared_local_state: true (AIINFRA_SHARED_LOCAL_STATE=1)")


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> PlatformConfig:
    """Build the PlatformConfig from file, environment and explicit overrides.

    Raises:
        InvalidInput: the file is missing or unreadable, or a field is invalid; the message
            lists every invalid field at once.
    """
    data: dict[str, Any] = {}
    path = path or ENV.CONFIG.get(environ)
    if path:
        data.update(read_yaml(path, "AIINFRA_CONFIG file"))

    env_fields = {
        "home": ENV.HOME,
        "storage_root": ENV.STORAGE_ROOT,
        "metadata_url": ENV.METADATA_URL,
        "ray_address": ENV.RAY_ADDRESS,
        "shared_local_state": ENV.SHARED_LOCAL_STATE,
    }
    for field, var in env_fields.items():
        raw = (os.environ if environ is None else environ).get(var.name)
        if raw:
            data[field] = raw
    url_file = ENV.METADATA_URL_FILE.get(environ)
    if url_file and "metadata_url" not in data:
        data["metadata_url"] = _read_secret_file(url_file, ENV.METADATA_URL_FILE.name)
    if "home" not in data:
        data["home"] = ENV.HOME.get(environ)
    port = (os.environ if environ is None else environ).get(ENV.SERVE_PORT.name)
    if port:
        data["serve"] = {**data.get("serve", {}), "port": port}
    grpc_port = (os.environ if environ is None else environ).get(ENV.SERVE_GRPC_PORT.name)
    if grpc_port:
        data["serve"] = {**data.get("serve", {}), "grpc_port": grpc_port}
    submitted = ENV.SUBMITTED_CONFIG.get(environ)
    if submitted:  # a job's config is its submitter's (fields left out of it, credentials, come from here)
        try:
            shipped = json.loads(submitted)
        except ValueError as e:
            raise InvalidInput(f"{ENV.SUBMITTED_CONFIG.name} is not valid JSON: {e}") from None
        if not isinstance(shipped, dict):
            raise InvalidInput(f"{ENV.SUBMITTED_CONFIG.name} must hold a JSON object")
        data.update(shipped)
    data.update({k: v for k, v in overrides.items() if v is not None})

    return validate_as(PlatformConfig, data, "platform config")


def _read_secret_file(path: str, what: str) -> str:
    """The one line a mounted secret file holds (its contents never appear in an error)."""
    try:
        value = Path(path).read_text().strip()
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None
    if not value:
        raise InvalidInput(f"{what} {path} is empty; it should hold the metadata DB URL")
    return value


def read_yaml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every failure is an InvalidInput naming ``what`` and the path."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise InvalidInput(f"{what} {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise InvalidInput(f"{what} {path} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def validate_as(model: type[M], data: Any, what: str) -> M:
    """``model.model_validate(data)``, with one InvalidInput that names every invalid field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(format_validation_error(what, e)) from None


def format_validation_error(what: str, error: ValidationError) -> str:
    """One message that names every invalid field, e.g. ``serve.port: ...; home: ...``."""
    parts = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    if len(parts) > 12:  # a repeated mistake (say, in 64 generated entries) should not bury the message
        parts = [*parts[:10], f"... and {len(parts) - 10} more"]
    return f"invalid {what}: " + "; ".join(parts)
