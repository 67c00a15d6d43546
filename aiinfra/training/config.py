"""The training pipeline's config: one YAML file, validated as a whole before anything starts.

Everything a run needs is here, so that the *resolved* config (dataset versions pinned, the
feature spec inlined, the best trial's hyperparameters fixed) is the recipe ``aiinfra reproduce``
runs again. Every invalid field, and every out-of-range value a search space could draw, is
reported in one error before a single worker starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiinfra.config import read_yaml, validate_as
from aiinfra.data.transforms import FeatureSpec, load_feature_spec
from aiinfra.errors import InvalidInput
from aiinfra.features.views import FeatureView
from aiinfra.registry.types import validate_name
from aiinfra.training.gate import GateConfig
from aiinfra.training.models import FAMILIES, build_model
from aiinfra.training.trees import TREE_FAMILIES, is_tree_family, tree_params

__all__ = [
    "DataSettings",
    "ModelSettings",
    "SearchDistribution",
    "Task",
    "TrainConfig",
    "TrainerSettings",
    "TuneSettings",
    "config_hash",
    "get_path",
    "load_train_config",
    "set_path",
]

Task = Literal["binary", "multiclass", "regression"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSettings(_Strict):
    """How rows are held out for evaluation and for early stopping.

    ``holdout_dataset`` names a separate dataset version to evaluate on. Otherwise the last
    ``holdout_fraction`` of rows by ``time_column`` (or a seeded random share, without one) is held out.
    """

    holdout_dataset: str | None = None
    time_column: str | None = None
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)


class DataSettings(_Strict):
    dataset: str = Field(description="NAME (the latest version, pinned when the run starts) or NAME@VERSION")
    label: str = Field(min_length=1)
    features: FeatureSpec | Literal["auto"] = Field(
        description="the feature transforms, inline or a path to a YAML file; `auto` infers them from the training "
                    "rows (aiinfra/data/suggest.py) and registers the inferred spec in the resolved config")
    feature_view: str | FeatureView | None = Field(
        None, description="join features point-in-time from this feature view: a registered view's name, or a "
                          "definition (registered, or updated, when the run starts)")
    label_delay_s: float = Field(0.0, ge=0.0, description="a label becomes known this long after the row's timestamp")
    split: SplitSettings = SplitSettings()
    slices: list[str] = Field(default_factory=list, description="categorical columns to report metrics per value of")
    engine: Literal["auto", "memory", "ray"] = Field(
        "auto", description="where the training table is built: in the job's driver (`memory`), on Ray Data across the "
                            "cluster (`ray`: read, point-in-time join, split and fit without gathering the rows), or "
                            "`auto`: Ray Data from 2,000,000 rows of the dataset version up. Both give the same rows, "
                            "split and fitted transforms")

    @property
    def feature_view_name(self) -> str | None:
        return self.feature_view.name if isinstance(self.feature_view, FeatureView) else self.feature_view


class ModelSettings(_Strict):
    family: str = "tabular_mlp"
    params: dict[str, Any] = Field(default_factory=dict)


class TrainerSettings(_Strict):
    num_workers: int = Field(2, ge=1, le=1024)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0.0, le=256)
    gpus_per_worker: float = Field(1.0, gt=0.0, le=16)
    bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=1_000_000, description="per worker")
    lr: float = Field(0.01, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    patience: int | None = Field(3, ge=1, description="stop after this many epochs without a better val_loss")
    min_delta: float = Field(0.0, ge=0.0)
    max_failures: int = Field(2, ge=0, le=100, description="worker-group restarts from the last checkpoint")
    shuffle: bool = True
    cache_shards: bool | Literal["auto"] = Field(
        "auto", description="keep each worker's data shard in memory as tensors, read once (`true`), stream it from Ray "
                            "Data every epoch (`false`), or `auto`: cache only when the shard fits shard_cache_bytes")
    shard_cache_bytes: int | None = Field(
        None, ge=0, description="auto: the memory a worker may use to cache its train and validation shards, counting "
                                "the moment both the batches and their concatenation exist (twice the shard). Unset: a "
                                "quarter of the node's memory (its cgroup limit where lower) shared by its training "
                                "workers")


class SearchDistribution(_Strict):
    """Exactly one of: ``uniform: [lo, hi]``, ``loguniform: [lo, hi]``, ``randint: [lo, hi)``, ``choice: [...]``, ``grid: [...]``."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDistribution:
        given = [k for k, v in self.__dict__.items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, randint, choice, grid (got {given or 'none'})")
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("uniform", "loguniform", "randint") and not value[0] < value[1]:
            raise ValueError(f"{kind}: the low bound must be below the high bound, got {list(value)}")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError("loguniform: bounds must be positive")
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind}: give at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, v in self.__dict__.items() if v is not None)

    def extremes(self) -> list[Any]:
        """The values to check before searching: the bounds, or every listed value."""
        value = getattr(self, self.kind)
        if self.kind == "randint":
            return [value[0], value[1] - 1]
        return list(value)


class TuneSettings(_Strict):
    search_space: dict[str, SearchDistribution] = Field(min_length=1, description="dotted config paths, e.g. trainer.lr")
    num_samples: int = Field(8, ge=1, le=10_000)
    max_concurrent_trials: int = Field(2, ge=1, le=1024)
    time_budget_s: float | None = Field(None, gt=0)
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)
    workers_per_trial: int = Field(1, ge=1, le=1024, description="DDP workers inside each trial")

    @field_validator("search_space")
    @classmethod
    def _paths(cls, space: dict[str, SearchDistribution]) -> dict[str, SearchDistribution]:
        for path in space:
            if not path.startswith(("trainer.", "model.params.")):
                raise ValueError(f"{path!r}: only trainer.* and model.params.* can be searched")
            if path in ("trainer.seed", "trainer.num_workers", "trainer.use_gpu"):
                raise ValueError(f"{path!r} cannot be searched")
        return space


class TrainConfig(_Strict):
    """A training pipeline run: ``aiinfra train CONFIG``."""

    name: str = Field(description="the registered model's name")
    experiment: str | None = Field(None, description="groups runs; defaults to the model name")
    task: Task = "binary"
    data: DataSettings
    model: ModelSettings = ModelSettings()
    trainer: TrainerSettings = TrainerSettings()
    tune: TuneSettings | None = None
    gate: GateConfig | None = None
    register_model: bool = Field(True, description="register the candidate and alias it when the gate passes")

    @field_validator("name", "experiment")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return validate_name("model name", value)
        except InvalidInput as e:
            raise ValueError(e.message) from None

    @model_validator(mode="after")
    def _defaults(self) -> TrainConfig:
        if self.gate is None:
            metric = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}[self.task]
            self.gate = GateConfig(metric=metric)
        return self

    @model_validator(mode="after")
    def _trainer_fits_the_family(self) -> TrainConfig:
        if self.model.family == "lightgbm" and self.trainer.use_gpu:
            raise ValueError("model.family lightgbm trains on CPU here (its GPU build is not installed); "
                             "set trainer.use_gpu: false, or use xgboost on GPUs")
        return self

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name


def get_path(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        node = node[part]
    return node


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _probe_input_dim(params: dict[str, Any]) -> int:
    """An input width to build the model with before the data is known: one its shape params accept."""
    shape = params.get("image_shape")
    if isinstance(shape, (list, tuple)) and all(isinstance(d, int) and d > 0 for d in shape):
        return int(math.prod(shape))
    return 64  # a square (8 x 8), for families that infer an image from the width


def _check_model(family: str, params: dict[str, Any]) -> str | None:
    if is_tree_family(family):
        try:
            tree_params(family, params)
        except InvalidInput as e:
            return e.message
        return None
    if family not in FAMILIES:
        return f"unknown model family {family!r}; known: {', '.join(sorted([*FAMILIES, *TREE_FAMILIES]))}"
    try:
        # On the meta device: shapes and checks only, no memory for the weights, however large.
        with torch.device("meta"):
            build_model(family, _probe_input_dim(params), 2, params)
    except InvalidInput as e:
        return e.message
    return None


# The torch loop's settings, which the tree families' loop does not read: searching one runs identical trials.
_IGNORED_BY_TREES = ("trainer.lr", "trainer.epochs", "trainer.batch_size", "trainer.optimizer", "trainer.weight_decay",
                     "trainer.patience", "trainer.shuffle", "trainer.cache_shards", "trainer.shard_cache_bytes",
                     "trainer.bf16")


def check_search_space(cfg: TrainConfig) -> None:
    """Refuse a model, or a search space that could draw an invalid value, before any worker starts.

    The model is built from its hyperparameters; each bound (or listed value) of the search is
    put into the config, validated and built with, so every constraint the trainer and the model
    family know is applied.
    """
    problems: list[str] = []
    why = _check_model(cfg.model.family, cfg.model.params)
    if why:
        problems.append(f"model: {why}")
    base = cfg.model_dump(mode="json")
    tree = is_tree_family(cfg.model.family)
    for path, dist in (cfg.tune.search_space.items() if cfg.tune else []):
        if tree and path in _IGNORED_BY_TREES:
            problems.append(f"tune.search_space.{path}: {cfg.model.family} does not use {path} "
                            "(its rounds and rates are model.params.*)")
            continue
        try:
            current = get_path(base, path)
        except (KeyError, TypeError):
            current = None
        if current is None and tree and path.startswith("model.params."):  # a tree default, not written in the config
            current = tree_params(cfg.model.family, cfg.model.params).model_dump().get(path.removeprefix("model.params."))
        if isinstance(current, int) and not isinstance(current, bool) and dist.kind in ("uniform", "loguniform"):
            problems.append(f"tune.search_space.{path}: {dist.kind} draws fractions but {path} is an integer; "
                            "use randint, choice or grid")
            continue
        for value in dist.extremes():
            trial = copy.deepcopy(base)
            trial["tune"] = None
            set_path(trial, path, value)
            try:
                candidate = validate_as(TrainConfig, trial, "config")
            except InvalidInput as e:
                problems.append(f"tune.search_space.{path} = {value!r}: {e.message.removeprefix('invalid config: ')}")
                continue
            why = _check_model(candidate.model.family, candidate.model.params)
            if why:
                problems.append(f"tune.search_space.{path} = {value!r}: {why}")
    if problems:
        raise InvalidInput("invalid training config: " + "; ".join(problems))


def load_train_config(source: str | Path | dict[str, Any]) -> TrainConfig:
    """Read and validate a training config; a ``data.features`` path is read relative to the config file."""
    if isinstance(source, dict):
        raw, base = copy.deepcopy(source), Path.cwd()
        what = "training config"
    else:
        raw, base = read_yaml(source, "training config"), Path(source).resolve().parent
        what = f"training config {source}"
    features = (raw.get("data") or {}).get("features") if isinstance(raw.get("data"), dict) else None
    if isinstance(features, str) and features != "auto":
        path = Path(features) if Path(features).is_absolute() else base / features
        raw["data"]["features"] = load_feature_spec(path).model_dump(mode="json")
    cfg = validate_as(TrainConfig, raw, what)
    check_search_space(cfg)
    return cfg


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 of the canonical JSON form: equal configs hash equal, whatever the YAML's layout."""
    canonical = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
