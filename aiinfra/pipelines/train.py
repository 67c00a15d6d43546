"""The training pipeline (``aiinfra train CONFIG``, ``jobs/train.py``) and ``aiinfra reproduce``.

dataset version -> features (point-in-time when a feature view is named) -> split -> fit the
transforms -> train (DDP) or tune -> evaluate on the holdout -> the promotion gate against the
champion on the same rows -> register with full lineage -> alias challenger (champion when there
is none yet).

Every run is recorded as it goes (params, per-epoch metrics, trials, status, CPU-seconds, dataset
versions, code version, config hash, seed). The resolved config, with dataset versions pinned and
the chosen hyperparameters fixed, is registered with the model as ``training_config.json``:
``reproduce`` runs exactly that again.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiinfra.data.fitting import Passes, frame_passes
from aiinfra.data.splits import HOLDOUT, TRAIN, VALIDATION, SplitRule, time_threshold
from aiinfra.data.suggest import profile_frame, suggest_features
from aiinfra.data.transforms import fit_features
from aiinfra.errors import InvalidInput, NotFound
from aiinfra.features.offline import point_in_time_join
from aiinfra.features.views import FeatureView
from aiinfra.monitoring.profile import build_profile, write_profile
from aiinfra.pipelines.judging import gate_against_champion, holdout_outputs, report_on
from aiinfra.pipelines.progress import StageLog
from aiinfra.provenance import code_version, environment, environment_changes
from aiinfra.registry.approvals import AliasRequest
from aiinfra.training.budgets import RAY_ENGINE_ROWS, use_ray_engine  # noqa: F401 - re-exported
from aiinfra.training.config import TrainConfig, config_hash, load_train_config
from aiinfra.training.evaluation import render_html
from aiinfra.training.model_dir import ModelSpec, save_model_dir
from aiinfra.training.ray_train import PreparedData, fit
from aiinfra.training.search import apply_overrides, search
from aiinfra.training.tabular import class_labels_for, signature_for
from aiinfra.training.trees import is_tree_family

__all__ = ["TRAINING_CONFIG", "TrainingOutcome", "prepare_data", "reproduce", "run_training"]

TRAINING_CONFIG = "training_config.json"
EVALUATION = "evaluation.json"
REPORT_HTML = "evaluation.html"
LABEL_TIME = "label_ts"


@dataclass
class TrainingOutcome:
    run_id: str
    config: TrainConfig  # resolved: pinned data, chosen hyperparameters
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    dataset_versions: list[str]
    model: str | None = None
    alias: str | None = None
    verdict: dict[str, Any] | None = None
    reports: dict[str, str] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    holdout_sample: pd.DataFrame | None = None  # a few held-out rows, for a first look at predictions

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "model": self.model, "alias": self.alias, "metrics": self.metrics,
            "verdict": self.verdict, "dataset_versions": self.dataset_versions, "reports": self.reports,
            "trials": self.trials, "epochs": len(self.history), "seconds": round(self.seconds, 2),
            "config_hash": config_hash(self.config),
        }


# -- data -------------------------------------------------------------------------------------
def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{what} has no column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}")


def _with_features(platform: Any, cfg: TrainConfig, frame: pd.DataFrame, dataset: str,
                   pinned: dict[str, str]) -> tuple[pd.DataFrame, FeatureView]:
    """Point-in-time features for each labelled row, as of the time its label became known."""
    spec = cfg.data.feature_view
    fv = platform.features.register_view(spec) if isinstance(spec, FeatureView) else platform.features.get_view(spec)
    _require_columns(frame, [fv.entity, fv.timestamp, cfg.data.label], f"dataset {dataset}")
    if fv.source == dataset.split("@")[0]:
        source = frame  # the pinned version itself
    else:
        catalog = platform.datasets
        version = catalog.get(pinned.get("feature_source") or fv.source)
        pinned["feature_source"] = version.ref
        source = catalog.load(version).to_pandas()
    keep = [fv.entity, fv.timestamp, cfg.data.label, *[c for c in cfg.data.slices if c not in fv.features]]
    labels = frame[list(dict.fromkeys(keep))].rename(columns={fv.timestamp: LABEL_TIME})
    labels[LABEL_TIME] = labels[LABEL_TIME] + pd.Timedelta(seconds=cfg.data.label_delay_s)
    return point_in_time_join(labels, fv, source, timestamp_column=LABEL_TIME), fv


def prepare_data(platform: Any, cfg: TrainConfig) -> tuple[PreparedData, pd.DataFrame, TrainConfig, list[str]]:
    """(training data, holdout rows, the config with every dataset version pinned, those versions).

    The table is built in this process (``data.engine: memory``) or on Ray Data (``ray``; ``auto`` picks by the
    version's size): the same rows on the same sides of the split and the same fitted transforms either way.
    """
    catalog = platform.datasets
    d = cfg.data
    version = catalog.get(d.dataset)
    if use_ray_engine(d.engine, version, _feature_source_rows(platform, cfg)):
        from aiinfra.pipelines.training_table import prepare_on_ray

        return prepare_on_ray(platform, cfg, version)
    pinned: dict[str, str] = {"dataset": version.ref}
    table = catalog.load(version).to_pandas()
    view = None
    if d.feature_view:
        table, view = _with_features(platform, cfg, table, version.ref, pinned)
    holdout = None
    if d.split.holdout_dataset:
        hv = catalog.get(d.split.holdout_dataset)
        pinned["holdout"] = hv.ref
        holdout = catalog.load(hv).to_pandas()
        if d.feature_view:
            holdout, _ = _with_features(platform, cfg, holdout, hv.ref, pinned)
    needed = [d.label, *([] if d.features == "auto" else [f.column for f in d.features.features]), *d.slices]
    _require_columns(table, needed, f"the training table from {version.ref}")
    table = table.dropna(subset=[d.label]).reset_index(drop=True)
    time_column = d.split.time_column or (LABEL_TIME if d.feature_view else None)
    if holdout is not None:
        _require_columns(holdout, needed, f"the holdout table from {pinned['holdout']}")
    elif time_column:
        _require_columns(table, [time_column], f"the training table from {version.ref}")
    rule = split_rule(cfg, version, list(table.columns), view, frame_passes(table),
                      time_column=None if holdout is not None else time_column, separate_holdout=holdout is not None)
    side = rule.assign(table)
    if holdout is None:
        holdout = table[side == HOLDOUT]
    train, val = table[side == TRAIN], table[side == VALIDATION]
    if len(train) < 10 or len(holdout) < 1:
        raise InvalidInput(f"{version.ref} gives {len(train)} training and {len(holdout)} holdout rows: too few to train on")
    labels = class_labels_for(cfg.task, train[d.label])
    mean, std = 0.0, 1.0
    if cfg.task == "regression":
        y = train[d.label].to_numpy(dtype=np.float64)
        mean, std = float(y.mean()), float(y.std()) or 1.0
    features, left_out = d.features, {}
    if features == "auto":  # inferred from the training rows; the resolved config registers what was inferred
        features, left_out = _auto_features(platform, cfg, profile_frame(train), version, time_column)
    pre = fit_features(train, features)
    resolved = resolve_config(cfg, version, features, pinned)
    data = PreparedData(train=train.reset_index(drop=True), val=val.reset_index(drop=True), pre=pre, label=d.label,
                        task=cfg.task, class_labels=labels, target_mean=mean, target_std=std, left_out=left_out)
    return data, holdout.reset_index(drop=True), resolved, list(pinned.values())


def _feature_source_rows(platform: Any, cfg: TrainConfig) -> int:
    if cfg.data.engine != "auto":
        return 0
    source = feature_source(platform, cfg)
    return (source.row_count or 0) if source is not None else 0


def feature_source(platform: Any, cfg: TrainConfig) -> Any:
    """The dataset version the config's feature view reads its features from (its latest), or None without a view."""
    spec = cfg.data.feature_view
    if spec is None:
        return None
    source = spec.source if isinstance(spec, FeatureView) else platform.features.get_view(spec).source
    return platform.datasets.get(source)


def split_rule(cfg: TrainConfig, version: Any, columns: list[str], view: FeatureView | None, passes: Passes, *,
               time_column: str | None, separate_holdout: bool) -> SplitRule:
    """The run's split (aiinfra/data/splits.py): rows hashed by the dataset's key (its own columns without one;
    never the view's features), the time threshold from ``passes`` over the table."""
    s = cfg.data.split
    key = [LABEL_TIME if view is not None and c == view.timestamp else c for c in (version.spec or {}).get("key") or []]
    own = [c for c in columns if view is None or c not in view.features]
    hash_columns = tuple(key if key and all(c in columns for c in key) else own)
    threshold = time_threshold(passes, time_column, s.holdout_fraction) if time_column else None
    return SplitRule(holdout_fraction=0.0 if separate_holdout else s.holdout_fraction,
                     validation_fraction=s.validation_fraction, seed=cfg.trainer.seed, hash_columns=hash_columns,
                     time_column=time_column, time_threshold_ns=threshold)


def resolve_config(cfg: TrainConfig, version: Any, features: Any, pinned: dict[str, str]) -> TrainConfig:
    d = cfg.data
    return cfg.model_copy(update={"data": d.model_copy(update={
        "dataset": version.ref, "features": features,
        "split": d.split.model_copy(update={"holdout_dataset": pinned.get("holdout")}),
    })})


def _auto_features(platform: Any, cfg: TrainConfig, profile: Any, version: Any,
                   time_column: str | None) -> tuple[Any, dict[str, str]]:
    """``features: auto``: the spec suggested from the training rows' profile, and the columns left out (why)."""
    d = cfg.data
    keys = list((version.spec or {}).get("key") or [])
    exclude = {}
    if d.feature_view is not None:  # the view's entity is a key, whatever the dataset's spec says
        fv = d.feature_view if isinstance(d.feature_view, FeatureView) else platform.features.get_view(d.feature_view)
        keys.append(fv.entity)
    if time_column:
        exclude[time_column] = "the split's time column (the holdout is chosen by it)"
    if LABEL_TIME in profile.columns:
        exclude.setdefault(LABEL_TIME, "when the label became known (the feature view's join time)")
    suggestion = suggest_features(profile, label=d.label, keys=keys, exclude=exclude,
                                  for_trees=is_tree_family(cfg.model.family), source=f"the training rows of {version.ref}")
    return suggestion.spec, suggestion.left_out


# -- evaluation ---------------------------------------------------------------------------------
def _holdout_outputs(model_dir: Path, holdout: pd.DataFrame, cfg: TrainConfig) -> tuple[ModelSpec, np.ndarray, np.ndarray]:
    """(spec, the saved model's outputs on ``holdout``, the true labels: class indexes or values)."""
    return holdout_outputs(model_dir, holdout, cfg.data.label)


def evaluate_model(model_dir: Path, holdout: pd.DataFrame, cfg: TrainConfig,
                   outputs: tuple[ModelSpec, np.ndarray, np.ndarray] | None = None) -> Any:
    """The evaluation report of a saved model on ``holdout``, per slice as configured."""
    return report_on(outputs or _holdout_outputs(model_dir, holdout, cfg), holdout, cfg.data.slices)


def _write_profile(model_dir: Path, holdout: pd.DataFrame, data: PreparedData, cfg: TrainConfig,
                   outputs: tuple[ModelSpec, np.ndarray, np.ndarray], source: str) -> None:
    """The version's reference profile (its monitor's reference and calibration data), into the model dir."""
    spec, scores, y_true = outputs
    profile = build_profile(holdout, signature_for(data.pre, cfg.task, data.class_labels).inputs, task=spec.task,
                            class_labels=list(spec.class_labels), outputs=scores, labels=y_true,
                            source=source, seed=cfg.trainer.seed)
    write_profile(profile, model_dir)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# -- the pipeline -------------------------------------------------------------------------------
def run_training(platform: Any, cfg: TrainConfig, *, kind: str = "train", parent_run_id: str | None = None,
                 log: StageLog | None = None, set_alias: bool = True,
                 lineage: dict[str, Any] | None = None) -> TrainingOutcome:
    """Run the training pipeline on a connected platform; returns what it made and decided.

    ``set_alias=False`` registers a version that passed the gate without aliasing it (the autopilot
    starts its canary itself); ``lineage`` adds entries to the registered version's lineage.
    """
    t_start = time.perf_counter()
    log = log or StageLog(total=0)
    if not log.total:  # a log of its own; a caller's (the demo's) already counts these stages
        log.total = 5 if cfg.register_model else 3
    storage_root = platform.config.storage_root
    registry = platform.registry
    run_id = f"run-{uuid.uuid4().hex[:12]}"

    with log.stage(f"load {cfg.data.dataset} and build the training table"):
        data, holdout, resolved, dataset_versions = prepare_data(platform, cfg)
        log.note(f"{', '.join(dataset_versions)}: train {data.n_train:,}, validation {data.n_val:,}, "
                 f"holdout {len(holdout):,} rows; {data.pre.output_dim} model inputs"
                 + (f"; classes {data.class_labels}" if data.class_labels else ""))
        if cfg.data.features == "auto":
            log.note("features: auto: " + ", ".join(f"{f.column} ({' + '.join(s.op for s in f.steps)})"
                                                    for f in data.pre.spec.features)
                     + "".join(f"; left out {c}: {why}" for c, why in data.left_out.items()))
    code = code_version()
    env = environment()
    code_record = {"version": code, "dirty": code.endswith("-dirty"), "environment": env}
    registry.start_run(
        experiment=cfg.experiment_name, kind="tune" if kind == "train" and cfg.tune else kind, run_id=run_id, params=resolved.model_dump(mode="json"),
        config_hash=config_hash(resolved), seed=cfg.trainer.seed, dataset_versions=dataset_versions,
        code_version=code_record, parent_run_id=parent_run_id,
    )
    trials: list[dict[str, Any]] = []
    try:
        if cfg.tune is not None:
            with log.stage(f"search {len(cfg.tune.search_space)} hyperparameter(s) with Ray Tune "
                           f"({cfg.tune.num_samples} trials, {cfg.tune.scheduler}, {cfg.tune.max_concurrent_trials} at a time)"):
                found = search(resolved, data, storage_root=storage_root, run_name=run_id,
                               records_namespace=platform.config.namespace)
                for t in found.trials:
                    trial_run = f"{run_id}-{t.trial_id}"
                    registry.start_run(experiment=cfg.experiment_name, kind="trial", run_id=trial_run,
                                       params=_json_safe(t.overrides), seed=cfg.trainer.seed, started_at=t.started_at,
                                       dataset_versions=dataset_versions, parent_run_id=run_id,
                                       config_hash=config_hash(_with_overrides(resolved, t.overrides)),
                                       code_version=code_record)
                    registry.log_epochs(trial_run, _json_safe(t.history))
                    registry.finish_run(trial_run, status=t.status, metrics=_json_safe(t.metrics), error=t.error,
                                        ended_at=None if t.started_at is None else t.started_at + t.wall_s,
                                        cpu_seconds=t.wall_s * cfg.tune.workers_per_trial * cfg.trainer.cpus_per_worker)
                    trials.append({"run_id": trial_run, "status": t.status, "epochs": t.epochs_run,
                                   "overrides": _json_safe(t.overrides), "val_loss": t.metrics.get("best_val_loss"),
                                   "error": t.error})
                    steps = "report(s)" if is_tree_family(cfg.model.family) else "epoch(s)"  # trees report per checkpoint
                    log.note(f"trial {t.trial_id}: {t.status} after {t.epochs_run} {steps}, "
                             f"best val_loss {t.metrics.get('best_val_loss', float('nan')):.4f} {_json_safe(t.overrides)}"
                             + (f" ({t.error[:120]})" if t.error else ""))
                final_cfg, best_state, history = found.best_config, found.best_state, found.history
                cpu_s, gpu_s = found.cpu_seconds, 0.0
                log.note(f"best trial {found.best.trial_id}: {_json_safe(found.best.overrides)}; "
                         f"{sum(t['status'] == 'stopped' for t in trials)} stopped early by the scheduler, "
                         f"{sum(t['status'] == 'failed' for t in trials)} failed; {found.wall_s:.1f}s")
        else:
            t = cfg.trainer
            with log.stage(f"train {cfg.model.family} with Ray Train ({_how(cfg)})"):
                fitted = fit(resolved, data, storage_root=storage_root, run_name=run_id,
                             records_namespace=platform.config.namespace)
                final_cfg, best_state, history = resolved, fitted.best_state, fitted.history
                cpu_s, gpu_s = fitted.cpu_seconds, fitted.gpu_seconds
                log.note(_history_note(cfg, history, fitted.wall_s))
        registry.log_epochs(run_id, _json_safe(history))

        with log.stage("evaluate on the holdout"):
            workdir = Path(tempfile.mkdtemp(prefix="aiinfra-train-"))
            model_dir = workdir / "model"
            spec = ModelSpec(family=final_cfg.model.family, params=final_cfg.model.params, input_dim=data.pre.output_dim,
                             output_dim=data.output_dim, task=cfg.task, class_labels=data.class_labels,
                             target_mean=data.target_mean, target_std=data.target_std)
            save_model_dir(model_dir, spec, best_state, data.pre)
            final_cfg = final_cfg.model_copy(update={"tune": None})
            (model_dir / TRAINING_CONFIG).write_text(final_cfg.model_dump_json(indent=2))
            outputs = _holdout_outputs(model_dir, holdout, final_cfg)
            report = evaluate_model(model_dir, holdout, final_cfg, outputs)
            log.note(", ".join(f"{k} {v:.4f}" for k, v in report.metrics.items()))
            if cfg.register_model:  # built once, registered with the version: its monitor's reference
                split = final_cfg.data.split
                source = split.holdout_dataset or f"the holdout split of {final_cfg.data.dataset}"
                _write_profile(model_dir, holdout, data, final_cfg, outputs, source)

        verdict = None
        if cfg.register_model:
            with log.stage("promotion gate against the champion on the same holdout rows"):
                verdict = _gate(platform, cfg, report, holdout, workdir)
                log.note(f"{'PASS' if verdict.passed else 'FAIL'}: {verdict.reason}")

        reports = _write_reports(platform, run_id, model_dir, report, history, verdict, cfg, dataset_versions)
        outcome = TrainingOutcome(run_id=run_id, config=final_cfg, metrics=report.metrics, history=history,
                                  dataset_versions=dataset_versions, verdict=None if verdict is None else verdict.model_dump(),
                                  reports=reports, trials=trials, holdout_sample=holdout.head(20).copy())
        if cfg.register_model:
            with log.stage("register with lineage and alias"):
                _register(platform, cfg, outcome, model_dir, data, verdict, code, env, log, set_alias=set_alias,
                          extra_lineage=lineage)
        registry.finish_run(run_id, status="finished", metrics=report.metrics,
                            artifacts={**reports, **({"model": outcome.model} if outcome.model else {})},
                            cpu_seconds=cpu_s, gpu_seconds=gpu_s)
    except BaseException as e:
        try:
            registry.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}"[:4000])
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    outcome.seconds = time.perf_counter() - t_start
    # With the stages (the CLI's go to stderr: `aiinfra train --json` keeps stdout for its one JSON document).
    print(f"run {run_id} finished in {outcome.seconds:.1f}s; report: {reports.get('report_html')}", file=log.out, flush=True)
    return outcome


def _how(cfg: TrainConfig) -> str:
    t = cfg.trainer
    if is_tree_family(cfg.model.family):
        return f"data-parallel boosting, {t.num_workers} worker(s)"
    return f"DDP, {t.num_workers} worker(s), {'NCCL on GPU' if t.use_gpu else 'gloo on CPU'}"


def _history_note(cfg: TrainConfig, history: list[dict[str, Any]], wall_s: float) -> str:
    unit = "round" if is_tree_family(cfg.model.family) else "epoch"
    resumed = [h["start_epoch"] for h in history if h.get("start_epoch")]
    if len(history) <= 12:
        losses = f"val_loss by {unit}: " + ", ".join(f"{h['val_loss']:.4f}" for h in history)
    else:  # a few hundred boosting rounds: the ends and the best, not every value
        best = min(history, key=lambda h: h["val_loss"])
        losses = (f"val_loss {history[0]['val_loss']:.4f} after the first {unit}, best {best['val_loss']:.4f} at {unit} "
                  f"{best['epoch'] + 1}, {history[-1]['val_loss']:.4f} at the last")
    return (f"{len(history)} {unit}(s) in {wall_s:.1f}s; {losses}"
            + (f"; resumed from {unit} {resumed[0]} after a failure" if resumed else ""))


def _with_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The trial's config, for its hash; the searched config if the values no longer validate."""
    try:
        return apply_overrides(cfg, overrides)
    except InvalidInput:
        return cfg


def _gate(platform: Any, cfg: TrainConfig, report: Any, holdout: pd.DataFrame, workdir: Path) -> Any:
    return gate_against_champion(platform, cfg.name, cfg.gate, report, holdout, cfg.data.label, cfg.data.slices, workdir)


def _write_reports(platform: Any, run_id: str, model_dir: Path, report: Any, history: list[dict[str, Any]],
                   verdict: Any, cfg: TrainConfig, dataset_versions: list[str]) -> dict[str, str]:
    (model_dir / EVALUATION).write_text(report.model_dump_json(indent=2))
    extra = {"run": run_id, "model": cfg.name, "family": cfg.model.family, "datasets": ", ".join(dataset_versions)}
    if verdict is not None:
        extra["gate"] = f"{'PASS' if verdict.passed else 'FAIL'}: {verdict.reason}"
    html = render_html(report, title=f"{cfg.name}: evaluation of {run_id}", history=history, extra=extra)
    (model_dir / REPORT_HTML).write_text(html)
    store = platform.store
    store.write_bytes(f"reports/{run_id}/{EVALUATION}", (model_dir / EVALUATION).read_bytes())
    store.write_bytes(f"reports/{run_id}/{REPORT_HTML}", html.encode())
    return {"evaluation": store.uri_for(f"reports/{run_id}/{EVALUATION}"),
            "report_html": store.uri_for(f"reports/{run_id}/{REPORT_HTML}")}


def _register(platform: Any, cfg: TrainConfig, outcome: TrainingOutcome, model_dir: Path, data: PreparedData,
              verdict: Any, code: str, env: dict[str, Any], log: StageLog, *, set_alias: bool = True,
              extra_lineage: dict[str, Any] | None = None) -> None:
    registry = platform.registry
    lineage = {
        "dataset_version": outcome.dataset_versions[0], "dataset_versions": outcome.dataset_versions,
        "run_id": outcome.run_id, "code_version": code, "config_hash": config_hash(outcome.config),
        "seed": cfg.trainer.seed, "feature_view": cfg.data.feature_view_name, "environment": env,
        "gate": None if verdict is None else {"passed": verdict.passed, "reason": verdict.reason},
        **(extra_lineage or {}),
    }
    version = registry.register(
        cfg.name, model_dir, metrics=outcome.metrics,
        params={"family": outcome.config.model.family, **outcome.config.model.params,
                **outcome.config.trainer.model_dump(mode="json")},
        signature=signature_for(data.pre, cfg.task, data.class_labels), lineage=lineage,
        idempotency_key=outcome.run_id,
    )
    outcome.model = version.ref
    try:
        champion = registry.get(f"{cfg.name}@champion")
    except NotFound:
        champion = None
    if verdict is not None and verdict.passed and not set_alias and champion is not None:
        log.note(f"registered {version.ref}; it passed the gate against {champion.ref} (no alias set: its canary is the caller's)")
    elif verdict is not None and verdict.passed:
        alias = "champion" if champion is None else "challenger"
        moved = registry.alias_or_request(cfg.name, version.version, alias, reason=f"run {outcome.run_id} passed the gate")
        if isinstance(moved, AliasRequest):  # a protected alias: it moves when its approvers approve
            log.note(f"registered {version.ref}; alias {alias} is protected: request {moved.id} needs {moved.needed} "
                     f"approval(s) (`aiinfra models approve {moved.id}`)")
            return
        outcome.alias = alias
        log.note(f"registered {version.ref}, alias {outcome.alias}"
                 + ("" if champion is None else f"; champion stays {champion.ref} until a canary promotes the challenger"))
    else:
        log.note(f"registered {version.ref} without an alias: the gate refused it")


# -- reproduce ----------------------------------------------------------------------------------
def reproduce(platform: Any, ref: str, *, tolerance: float = 0.02, log: StageLog | None = None) -> dict[str, Any]:
    """Train ``ref`` again from its registered recipe and data; compare the metrics.

    On CPU with the same seed and data, DDP's data sharding is the only source of difference,
    so metrics should agree within ``tolerance`` (absolute). The result's ``environment`` says how
    this environment differs from the recorded one (``changes`` is None when none was recorded).
    """
    registry = platform.registry
    version = registry.get(ref)
    with tempfile.TemporaryDirectory() as tmp:
        local = registry.download(version, Path(tmp) / "model")
        recipe = local / TRAINING_CONFIG
        if not recipe.exists():
            raise InvalidInput(f"{version.ref} has no {TRAINING_CONFIG}: it was not registered by the training pipeline, "
                               "so there is no recipe to reproduce it from")
        cfg = load_train_config(json.loads(recipe.read_text()))
    cfg = cfg.model_copy(update={"register_model": False})
    parent = version.lineage.run_id
    try:
        if parent:
            registry.get_run(parent)
    except NotFound:
        parent = None
    outcome = run_training(platform, cfg, kind="reproduce", parent_run_id=parent, log=log)
    comparison = {}
    for name, registered in version.metrics.items():
        again = outcome.metrics.get(name)
        comparison[name] = {"registered": registered, "reproduced": again,
                            "difference": None if again is None else again - registered}
    diffs = [abs(c["difference"]) for c in comparison.values() if c["difference"] is not None]
    recorded_env, current_env = version.lineage.environment, environment()
    return {
        "model": version.ref, "run_id": outcome.run_id, "original_run_id": version.lineage.run_id,
        "config_hash": config_hash(cfg.model_copy(update={"register_model": True})),
        "original_config_hash": (version.lineage.model_extra or {}).get("config_hash"),
        "metrics": comparison, "max_abs_difference": max(diffs) if diffs else None, "tolerance": tolerance,
        "within_tolerance": bool(diffs) and max(diffs) <= tolerance,
        "environment": {"recorded": recorded_env, "current": current_env,
                        "changes": None if recorded_env is None else environment_changes(recorded_env, current_env)},
    }
