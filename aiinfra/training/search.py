"""Hyperparameter search on Ray Tune, each trial a DDP run on Ray Train (the Train V2 pattern).

Each trial is a function trainable that builds its own TorchTrainer with ``TuneReportCallback``,
so Tune's scheduler (ASHA by default) sees every epoch's metrics and can stop a trial early. A
trial that crashes is recorded as failed and the search goes on; the best trial's checkpoint
holds the candidate's weights.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from aiinfra.config import validate_as
from aiinfra.errors import InvalidInput
from aiinfra.training.checkpoint_ledger import CheckpointRecords
from aiinfra.training.config import SearchDistribution, TrainConfig, set_path
from aiinfra.training.ray_train import (
    PreparedData,
    fit,
    load_checkpoint_at,
    make_datasets,
    planned_reports,
    storage_path,
)

__all__ = ["SearchResult", "TrialRecord", "apply_overrides", "search"]

# Ray (Tune) is imported inside the functions: the CLI imports pipelines.train, which imports this module,
# before connect() sets RAY_AUTH_MODE, and Ray reads that once, when it is imported.

# Tune's own bookkeeping in a result dict: not metrics worth recording.
_BOOKKEEPING = {"checkpoint_path", "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
                "time_since_restore", "iterations_since_restore", "training_iteration", "date", "done", "trial_id",
                "experiment_tag", "config"}


@dataclass
class TrialRecord:
    trial_id: str
    overrides: dict[str, Any]
    status: str  # finished | stopped (by the scheduler or early stopping) | failed
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    error: str | None
    checkpoint_path: str | None
    wall_s: float
    epochs_run: int
    started_at: float | None = None


@dataclass
class SearchResult:
    best: TrialRecord
    best_config: TrainConfig  # the searched config with the best trial's values, tune removed
    best_state: dict[str, torch.Tensor] | bytes
    history: list[dict[str, Any]]
    trials: list[TrialRecord] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_seconds: float = 0.0


def to_tune(dist: SearchDistribution) -> Any:
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    from ray import tune

    value = getattr(dist, dist.kind)
    return {
        "uniform": lambda: tune.uniform(*value),
        "loguniform": lambda: tune.loguniform(*value),
        "randint": lambda: tune.randint(*value),
        "choice": lambda: tune.choice(value),
        "grid": lambda: tune.grid_search(value),
    }[dist.kind]()


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The config with dotted-path values set, and no search left in it."""
    data = copy.deepcopy(cfg.model_dump(mode="json"))
    for path, value in overrides.items():
        set_path(data, path, value)
    data["tune"] = None
    return validate_as(TrainConfig, data, "trial config")


# The config paths that set how many reports a run makes (ASHA's time axis).
_LENGTH_PATHS = ("trainer.epochs", "model.params.num_boost_round", "model.params.checkpoint_every")


def _planned(cfg: TrainConfig, overrides: dict[str, Any]) -> int:
    try:
        return planned_reports(apply_overrides(cfg, overrides))
    except InvalidInput:
        return planned_reports(cfg)


def _most_reports(cfg: TrainConfig) -> int:
    """The longest run the search can draw: ASHA's ``max_t``, which ends any trial that reaches it."""
    assert cfg.tune is not None
    searched = [(path, cfg.tune.search_space[path].extremes()) for path in _LENGTH_PATHS if path in cfg.tune.search_space]
    if not searched:
        return planned_reports(cfg)
    paths = [p for p, _ in searched]
    return max(_planned(cfg, dict(zip(paths, values))) for values in itertools.product(*(v for _, v in searched)))


def _trial(overrides: dict[str, Any], *, cfg_json: dict[str, Any], data: PreparedData, datasets: dict[str, Any],
           storage_root: str, parent: str, records_namespace: str | None) -> None:
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = TrainConfig.model_validate(cfg_json)
    workers = cfg.tune.workers_per_trial if cfg.tune else 1
    trial_cfg = apply_overrides(cfg, overrides)
    fit(trial_cfg, data, storage_root=storage_root, run_name=f"{parent}-{tune.get_context().get_trial_id()}",
        num_workers=workers, callbacks=[TuneReportCallback()], datasets=datasets, records_namespace=records_namespace)


def search(cfg: TrainConfig, data: PreparedData, *, storage_root: str, run_name: str, progress: Any = None,
           records_namespace: str | None = None) -> SearchResult:
    """``records_namespace``: as ``fit``'s; each trial records its checkpoints, and the best one is checked."""
    # Ray inside: RAY_AUTH_MODE is read at Ray's import (see the note at the top).
    from ray import tune
    from ray.tune import RunConfig as TuneRunConfig
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    assert cfg.tune is not None
    ts = cfg.tune
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=_most_reports(cfg), grace_period=ts.grace_period,
                      reduction_factor=ts.reduction_factor)
        if ts.scheduler == "asha" else FIFOScheduler()
    )
    # Transformed once for all trials (materialized in the object store), not once per trial.
    datasets = make_datasets(data, ts.workers_per_trial)
    trainable = tune.with_parameters(_trial, cfg_json=cfg.model_dump(mode="json"), data=data, datasets=datasets,
                                     storage_root=storage_root, parent=run_name, records_namespace=records_namespace)
    # The trial's driver only waits on its TorchTrainer: it must not hold a CPU the workers need
    # (Tune refuses an empty request, hence a token share).
    trainable = tune.with_resources(trainable, {"cpu": 0.01})
    tuner = tune.Tuner(
        trainable,
        param_space={path: to_tune(dist) for path, dist in ts.search_space.items()},
        tune_config=tune.TuneConfig(metric=ts.metric, mode=ts.mode, scheduler=scheduler, num_samples=ts.num_samples,
                                    max_concurrent_trials=ts.max_concurrent_trials, time_budget_s=ts.time_budget_s),
        run_config=TuneRunConfig(name=run_name, storage_path=storage_path(storage_root, "tune"), verbose=0),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0

    trials: list[TrialRecord] = []
    for result in grid:
        frame = result.metrics_dataframe
        rows = frame.to_dict("records") if frame is not None and len(frame) else []
        history = [{k: v for k, v in r.items() if k not in _BOOKKEEPING and not k.startswith("config/")} for r in rows]
        metrics = {k: v for k, v in (result.metrics or {}).items() if k not in _BOOKKEEPING}
        started_at = None
        if rows and "timestamp" in rows[0]:  # the end of the first epoch, less its duration
            started_at = float(rows[0]["timestamp"]) - float(rows[0].get("time_this_iter_s", 0.0))
        epochs_run = len(history)
        if result.error is not None:
            status = "failed"
        elif epochs_run < _planned(cfg, dict(result.config or {})) and not metrics.get("stopped_early"):
            status = "stopped"  # the scheduler ended it
        else:
            status = "finished" if not metrics.get("stopped_early") else "stopped"
        trial_id = (result.metrics or {}).get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1]
        trials.append(TrialRecord(
            trial_id=str(trial_id), overrides=dict(result.config or {}), status=status, history=history,
            metrics=metrics, error=None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            checkpoint_path=(result.metrics or {}).get("checkpoint_path"),
            wall_s=float((result.metrics or {}).get("time_total_s", 0.0)), epochs_run=epochs_run, started_at=started_at,
        ))
    scored = [t for t in trials if t.error is None and t.checkpoint_path and ts.metric in t.metrics]
    if not scored:
        errors = "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error)[:2000]
        raise RuntimeError(f"no trial of {run_name} finished an epoch ({len(trials)} trial(s)). {errors}")
    # Compare on the best value each trial reached: with early stopping the last epoch is not the best one.
    key = "best_val_loss" if ts.metric == "val_loss" else ts.metric

    def score(t: TrialRecord) -> float:
        value = float(t.metrics.get(key, t.metrics[ts.metric]))
        return value if ts.mode == "min" else -value

    best = min(scored, key=score)
    records = (CheckpointRecords(namespace=records_namespace, run=f"{run_name}-{best.trial_id}")
               if records_namespace else None)  # the trial's run, as _trial named it
    best_state, history = load_checkpoint_at(best.checkpoint_path, storage_root,  # type: ignore[arg-type]
                                             checkpoints=records)
    cpus = (ts.workers_per_trial * cfg.trainer.cpus_per_worker)
    return SearchResult(
        best=best, best_config=apply_overrides(cfg, best.overrides), best_state=best_state, history=history,
        trials=trials, wall_s=wall, cpu_seconds=sum(t.wall_s for t in trials) * cpus,
    )
